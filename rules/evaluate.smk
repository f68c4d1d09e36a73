# Ground-truth masks are only ever read here, to measure; no training rule takes them.


rule evaluate_weak:
    input:
        pred=per_shard("results/weak/{shard}.npz"),
        gt=per_shard("results/gt/{shard}.npz"),
        qc="results/qc/weak.parquet",
    output:
        table="results/eval/weak.parquet",
        summary="results/eval/weak_summary.csv",
    log:
        "logs/eval/weak.log",
    threads: 1
    resources:
        mem_mb=shard_mem_mb(1000, 0.2),
        runtime=10,
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl evaluate --pred {input.pred} --gt {input.gt} --qc {input.qc} --stage weak "
        "--out {output.table} --summary {output.summary} > {log} 2>&1"
