rule qc_weak:
    input:
        masks="results/weak/{shard}.npz",
        code=PKG / "qc.py",
    output:
        "results/qc/{shard}.parquet",
    params:
        qc=json.dumps(config["qc"], sort_keys=True),
    log:
        "logs/qc/{shard}.log",
    benchmark:
        "results/benchmarks/qc/{shard}.tsv"
    threads: 1
    resources:
        mem_mb=shard_mem_mb(800, 0.3),
        runtime=shard_runtime(5, 0.05),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl qc --masks {input.masks} --params {params.qc:q} --out {output} > {log} 2>&1"


rule qc_weak_merge:
    input:
        per_shard("results/qc/{shard}.parquet"),
    output:
        table="results/qc/weak.parquet",
        summary="results/qc/weak_summary.json",
        plot=report(
            "results/qc/weak_hist.png",
            caption="../report/qc_hist.rst",
            category="Quality control",
        ),
    params:
        threshold=config["qc"]["threshold"],
    log:
        "logs/qc/merge.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl qc-merge --inputs {input} --threshold {params.threshold} --title 'Weak masks' "
        "--out {output.table} --summary {output.summary} --plot {output.plot} > {log} 2>&1"
