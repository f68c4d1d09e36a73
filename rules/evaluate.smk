# Ground-truth masks are only ever read here (and by the supervised reference), to measure.


rule evaluate:
    input:
        unpack(eval_predictions),
    output:
        "results/eval/{stage}.parquet",
    wildcard_constraints:
        stage=r"weak|final|supervised|round_[0-9]+",
    log:
        "logs/eval/{stage}.log",
    benchmark:
        "results/benchmarks/eval/{stage}.tsv"
    threads: 1
    resources:
        mem_mb=shard_mem_mb(1000, 0.2),  # reads one shard at a time
        runtime=cohort_runtime(5, 0.02),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl evaluate --pred {input.pred} --gt {input.gt} --manifest {input.manifest} "
        "--stage {wildcards.stage} $(test -n '{input.qc}' && echo --qc '{input.qc}') --out {output} > {log} 2>&1"


rule eval_summary:
    input:
        lambda wildcards: expand("results/eval/{stage}.parquet", stage=evaluated_stages()),
    output:
        report("results/eval/summary.csv", caption="../report/eval_summary.rst", category="Evaluation"),
    log:
        "logs/eval/summary.log",
    benchmark:
        "results/benchmarks/eval_summary.tsv"
    threads: 1
    resources:
        mem_mb=1000,  # a few summary rows per stage
        runtime=5,
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl eval-summary --inputs {input} --out {output} > {log} 2>&1"
