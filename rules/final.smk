# The chain file is the only door from the dynamic rounds to the final model: it names the last
# round and is written only after the whole chain 1..R checked out (see self_learning.verify_chain).


rule round_chain:
    input:
        round_chain_inputs,
    output:
        f"{ROUND_ROOT}/chain.json",
    log:
        "logs/rounds/chain.log",
    benchmark:
        "results/benchmarks/round_chain.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl round-chain --inputs {input} --out {output} > {log} 2>&1"


rule final_model:
    input:
        chain=f"{ROUND_ROOT}/chain.json",
        manifest="results/manifest.parquet",
        images=per_shard("results/images/{shard}.npy"),
        code=[PKG / "training.py", PKG / "self_learning.py"],
    output:
        model="results/final/model.pt",
        metrics="results/final/metrics.parquet",
        plot=report(
            "results/final/learning_curve.png",
            caption="../report/learning_curve.rst",
            category="3 Learning",
            subcategory="3 Final model",
            labels={"result": "learning curve"},
        ),
    params:
        device=config["train"]["device"],
        train=train_params(config["final"]["epochs"], lr_decay=config["final"]["lr_decay"]),
        state=lambda wildcards, output: os.path.join(os.path.dirname(output.model), "train_state.pt"),
    log:
        "logs/final/train.log",
    benchmark:
        "results/benchmarks/final_train.tsv"
    threads: config["train"]["threads"]
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime(config["final"]["epochs"]),
        gpu=config["resources"]["gpus_per_training"],
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl train --stage final --chain {input.chain} --manifest {input.manifest} "
        "--images {input.images} --params {params.train:q} --threads {threads} "
        "--device {params.device} --out {output.model} --metrics {output.metrics} --plot {output.plot} "
        "--state {params.state} > {log} 2>&1"


rule predict_model:
    input:
        model="results/{stage}/model.pt",
        table="results/ingest/shards/{shard}.parquet",
        images="results/images/{shard}.npy",
        code=PKG / "inference.py",
    output:
        masks="results/predictions/{stage}/{shard}.npz",
        stats="results/predictions/{stage}/{shard}.parquet",
    wildcard_constraints:
        stage="final|supervised",
    params:
        device=config["train"]["device"],
        batch=config["predict"]["batch_size"],
        tta="" if config["predict"]["tta"] else "--no-tta",
    log:
        "logs/predictions/{stage}/{shard}.log",
    benchmark:
        "results/benchmarks/predictions/{stage}/{shard}.tsv"
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
