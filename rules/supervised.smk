# The supervised reference: the same UNet trained on the ground-truth masks of the training split,
# so the label-free result is always seen next to what labels would give. Never feeds the label-free path.


rule supervised_model:
    input:
        manifest="results/manifest.parquet",
        images=per_shard("results/images/{shard}.npy"),
        targets=per_shard("results/gt/{shard}.npz"),
        code=PKG / "training.py",
    output:
        model="results/supervised/model.pt",
        metrics="results/supervised/metrics.parquet",
        plot=report(
            "results/supervised/learning_curve.png",
            caption="../report/learning_curve.rst",
            category="3 Learning",
            subcategory="4 Supervised reference",
            labels={"result": "learning curve"},
        ),
    params:
        device=config["train"]["device"],
        train=train_params(config["supervised"]["epochs"]),
        state=lambda wildcards, output: os.path.join(os.path.dirname(output.model), "train_state.pt"),
    log:
        "logs/supervised/train.log",
    benchmark:
        "results/benchmarks/supervised_train.tsv"
    threads: config["train"]["threads"]
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime(config["supervised"]["epochs"]),
        gpu=config["resources"]["gpus_per_training"],
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl train --stage supervised --manifest {input.manifest} --images {input.images} "
        "--targets {input.targets} --params {params.train:q} --threads {threads} --device {params.device} "
        "--out {output.model} --metrics {output.metrics} --plot {output.plot} --state {params.state} > {log} 2>&1"
