rule early_learning:
    input:
        manifest="results/manifest.parquet",
        images=per_shard("results/images/{shard}.npy"),
        targets=per_shard("results/weak/{shard}.npz"),
        qc="results/qc/weak.parquet",
        code=[PKG / "training.py", PKG / "early_stop.py"],
    output:
        model=f"{ROUND_ROOT}/0/model.pt",
        metrics=f"{ROUND_ROOT}/0/metrics.parquet",
        plot=report(
            f"{ROUND_ROOT}/0/learning_curve.png",
            caption="../report/learning_curve.rst",
            category="3 Learning",
            subcategory="1 Early learning",
            labels={"result": "learning curve"},
        ),
    params:
        device=config["train"]["device"],
        train=train_params(
            config["early_learning"]["max_epochs"],
            config["early_learning"]["min_epochs"],
            True,
            config["early_learning"]["slope_fraction"],
            restore_best=config["early_learning"]["restore_best"],
        ),
        state=lambda wildcards, output: os.path.join(os.path.dirname(output.model), "train_state.pt"),
    log:
        "logs/early_learning.log",
    benchmark:
        "results/benchmarks/early_learning.tsv"
    threads: config["train"]["threads"]
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime(config["early_learning"]["max_epochs"]),
        gpu=config["resources"]["gpus_per_training"],
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl train --stage early_learning --manifest {input.manifest} --images {input.images} "
        "--targets {input.targets} --qc {input.qc} --params {params.train:q} --threads {threads} "
        "--device {params.device} --out {output.model} --metrics {output.metrics} --plot {output.plot} "
        "--state {params.state} > {log} 2>&1"
