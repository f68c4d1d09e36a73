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
        unpack(eval_tables),
    output:
        report(
            "results/eval/summary.csv",
            caption="../report/eval_summary.rst",
            category="5 Evaluation",
            subcategory="Dice against the ground truth",
            labels={"result": "summary table (CSV)"},
        ),
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
        "lungssl eval-summary --inputs {input.tables} --out {output} > {log} 2>&1"


rule report_eval:
    input:
        unpack(eval_tables),
        summary="results/eval/summary.csv",
    output:
        table=report(
            "results/eval/summary.html",
            caption="../report/eval_table.rst",
            category="5 Evaluation",
            subcategory="Dice against the ground truth",
            labels={"result": "summary table"},
        ),
        plot=report(
            "results/eval/dice.png",
            caption="../report/eval_dice.rst",
            category="5 Evaluation",
            subcategory="Dice against the ground truth",
            labels={"result": "per-image Dice per stage"},
        ),
    log:
        "logs/eval/report.log",
    benchmark:
        "results/benchmarks/report_eval.tsv"
    threads: 1
    resources:
        mem_mb=cohort_mem_mb(1000, 0.01),  # the per-image rows of every stage
        runtime=5,
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl report-eval --inputs {input.tables} --summary {input.summary} --table {output.table} "
        "--plot {output.plot} > {log} 2>&1"


rule qc_quality:
    input:
        unpack(qc_quality_inputs),
    output:
        report(
            "results/eval/qc_quality.csv",
            caption="../report/qc_quality.rst",
            category="5 Evaluation",
            subcategory="Quality control against the ground truth",
            labels={"result": "QC precision and recall (CSV)"},
        ),
    params:
        scores=qc_quality_args,
    log:
        "logs/eval/qc_quality.log",
    benchmark:
        "results/benchmarks/eval_qc_quality.tsv"
    threads: 1
    resources:
        mem_mb=cohort_mem_mb(1000, 0.01),
        runtime=5,
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl qc-quality {params.scores} --out {output} > {log} 2>&1"
