# Round r (r >= 1): the model of round r-1 predicts pseudo-masks for every image, QC scores them,
# and the round_status checkpoint decides whether the loop stops. Rounds unroll at run time.


wildcard_constraints:
    r=r"[1-9][0-9]*",


rule predict_round:
    input:
        model=lambda wildcards: round_model(int(wildcards.r) - 1),
        table="results/ingest/shards/{shard}.parquet",
        images="results/images/{shard}.npy",
        code=PKG / "inference.py",
    output:
        masks=f"{ROUND_ROOT}/{{r}}/pseudo_raw/{{shard}}.npz",
        stats=f"{ROUND_ROOT}/{{r}}/pseudo_raw/{{shard}}.parquet",
    params:
        device=config["train"]["device"],
        batch=config["predict"]["batch_size"],
        tta="" if config["predict"]["tta"] else "--no-tta",
    log:
        "logs/rounds/{r}/predict/{shard}.log",
    benchmark:
        "results/benchmarks/rounds/{r}/predict/{shard}.tsv"
    threads: 2
    resources:
        mem_mb=predict_mem_mb,
        runtime=predict_runtime,
        gpu=config["resources"]["gpus_per_training"],
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl predict-shard --model {input.model} --images {input.images} --table {input.table} "
        "--batch-size {params.batch} {params.tta} --threads {threads} --device {params.device} "
        "--out {output.masks} --stats {output.stats} > {log} 2>&1"


# The model's outlines are smooth and consistent but sit a pixel or two off the anatomy's edges,
# the way its targets did; before they become the next targets, the weak masks' watershed moves
# each boundary onto the nearest edge within a narrow band (self_learning.snap_px; [] copies).
rule snap_round:
    input:
        masks=f"{ROUND_ROOT}/{{r}}/pseudo_raw/{{shard}}.npz",
        table="results/ingest/shards/{shard}.parquet",
        images="results/images/{shard}.npy",
        code=PKG / "weak_masks.py",
    output:
        f"{ROUND_ROOT}/{{r}}/pseudo/{{shard}}.npz",
    params:
        snap=snap_args(),
    log:
        "logs/rounds/{r}/snap/{shard}.log",
    benchmark:
        "results/benchmarks/rounds/{r}/snap/{shard}.tsv"
    threads: 1
    resources:
        mem_mb=shard_mem_mb(800, 0.3),
        runtime=shard_runtime(5, 0.05),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl snap-masks --masks {input.masks} --images {input.images} --table {input.table} {params.snap} "
        "--out {output} > {log} 2>&1"


rule qc_round:
    input:
        masks=f"{ROUND_ROOT}/{{r}}/pseudo/{{shard}}.npz",
        stats=f"{ROUND_ROOT}/{{r}}/pseudo_raw/{{shard}}.parquet",  # flip-TTA agreement of the prediction
        films="results/weak/{shard}.parquet",  # each image's film box, found with its weak mask
        prior=QC_PRIOR if USES_PRIOR else [],
        code=PKG / "qc.py",
    output:
        f"{ROUND_ROOT}/{{r}}/qc/{{shard}}.parquet",
    params:
        qc=json.dumps(CFG_QC, sort_keys=True),
        prior=lambda wildcards, input: f"--prior {input.prior}" if input.prior else "",
    log:
        "logs/rounds/{r}/qc/{shard}.log",
    benchmark:
        "results/benchmarks/rounds/{r}/qc/{shard}.tsv"
    threads: 1
    resources:
        mem_mb=shard_mem_mb(800, 0.3),
        runtime=shard_runtime(5, 0.05),
    conda:
        "../envs/lungssl.yaml"
    shell:
        # A pseudo-mask's agreement signal is its flip test-time-augmentation Dice.
        "lungssl qc --masks {input.masks} --stats {input.stats} --agreement tta_dice --films {input.films} "
        "{params.prior} --params {params.qc:q} --out {output} > {log} 2>&1"


checkpoint round_status:
    input:
        qc=per_shard(f"{ROUND_ROOT}/{{r}}/qc/{{shard}}.parquet"),
        manifest="results/manifest.parquet",
        model=lambda wildcards: round_model(int(wildcards.r) - 1),
    output:
        status=f"{ROUND_ROOT}/{{r}}/status.json",
        qc=f"{ROUND_ROOT}/{{r}}/qc.parquet",
    params:
        cfg=config["self_learning"],
    log:
        "logs/rounds/{r}/status.log",
    benchmark:
        "results/benchmarks/rounds/{r}/status.tsv"
    threads: 1
    resources:
        mem_mb=cohort_mem_mb(1500, 0.01),
        runtime=cohort_runtime(5, 0.01),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl round-status --round {wildcards.r} --qc {input.qc} --manifest {input.manifest} "
        "--model {input.model} --target-pass {params.cfg[target_pass]} --min-rounds {params.cfg[min_rounds]} "
        "--max-rounds {params.cfg[max_rounds]} --qc-out {output.qc} --out {output.status} > {log} 2>&1"


rule train_round:
    input:
        manifest="results/manifest.parquet",
        images=per_shard("results/images/{shard}.npy"),
        targets=per_shard(f"{ROUND_ROOT}/{{r}}/pseudo/{{shard}}.npz"),
        qc=f"{ROUND_ROOT}/{{r}}/qc.parquet",
        status=f"{ROUND_ROOT}/{{r}}/status.json",
        init=lambda wildcards: round_model(int(wildcards.r) - 1),
        code=[PKG / "training.py", PKG / "early_stop.py"],
    output:
        model=f"{ROUND_ROOT}/{{r}}/model.pt",
        metrics=f"{ROUND_ROOT}/{{r}}/metrics.parquet",
        plot=report(
            f"{ROUND_ROOT}/{{r}}/learning_curve.png",
            caption="../report/learning_curve.rst",
            category="3 Learning",
            subcategory="2 Self-learning rounds",
            labels={"result": "learning curve, round {r}"},
        ),
    params:
        device=config["train"]["device"],
        train=train_params(
            config["self_learning"]["max_epochs"],
            config["self_learning"]["min_epochs"],
            True,
            config["self_learning"]["slope_fraction"],
        ),
        state=lambda wildcards, output: os.path.join(os.path.dirname(output.model), "train_state.pt"),
    log:
        "logs/rounds/{r}/train.log",
    benchmark:
        "results/benchmarks/rounds/{r}/train.tsv"
    threads: config["train"]["threads"]
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime(config["self_learning"]["max_epochs"]),
        gpu=config["resources"]["gpus_per_training"],
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl train --stage round_{wildcards.r} --manifest {input.manifest} --images {input.images} "
        "--targets {input.targets} --qc {input.qc} --init {input.init} --params {params.train:q} "
        "--threads {threads} --device {params.device} --out {output.model} --metrics {output.metrics} "
        "--plot {output.plot} --state {params.state} > {log} 2>&1"
