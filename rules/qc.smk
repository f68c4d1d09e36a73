rule shape_prior:
    input:
        masks=per_shard("results/weak/{shard}.npz"),
        films=per_shard("results/weak/{shard}.parquet"),  # film boxes: placement is measured inside them
        code=PKG / "qc.py",
    output:
        QC_PRIOR,
    params:
        max_masks=CFG_QC["prior_max_masks"],
        seed=config["seed"],
        qc=json.dumps(CFG_QC, sort_keys=True),
        film_tolerance=config["weak_masks"]["pair_padding_tolerance"],
    log:
        "logs/qc/prior.log",
    benchmark:
        "results/benchmarks/qc_prior.tsv"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: int((1500 + CFG_QC["prior_max_masks"] * 0.002) * attempt),
        runtime=cohort_runtime(5, 0.02),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl shape-prior --masks {input.masks} --films {input.films} --max-masks {params.max_masks} "
        "--seed {params.seed} --params {params.qc:q} --film-tolerance {params.film_tolerance} "
        "--out {output} > {log} 2>&1"


rule qc_weak:
    input:
        masks="results/weak/{shard}.npz",
        stats="results/weak/{shard}.parquet",  # per-mask stability and film box
        prior=QC_PRIOR if USES_PRIOR else [],
        code=PKG / "qc.py",
    output:
        "results/qc/{shard}.parquet",
    params:
        qc=json.dumps(CFG_QC, sort_keys=True),
        prior=lambda wildcards, input: f"--prior {input.prior}" if input.prior else "",
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
        "lungssl qc --masks {input.masks} --stats {input.stats} --films {input.stats} {params.prior} "
        "--params {params.qc:q} --out {output} > {log} 2>&1"


rule qc_weak_merge:
    input:
        per_shard("results/qc/{shard}.parquet"),
    output:
        table="results/qc/weak.parquet",
        summary="results/qc/weak_summary.json",
        plot=report(
            "results/qc/weak_hist.png",
            caption="../report/qc_hist.rst",
            category="2 Quality control",
            subcategory="Weak masks",
            labels={"result": "QC score histogram"},
        ),
    params:
        threshold=QC_THRESHOLD,
    log:
        "logs/qc/merge.log",
    benchmark:
        "results/benchmarks/qc_merge.tsv"
    threads: 1
    resources:
        mem_mb=cohort_mem_mb(1500, 0.01),
        runtime=cohort_runtime(5, 0.01),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl qc-merge --inputs {input} --threshold {params.threshold} --title 'Weak masks' "
        "--out {output.table} --summary {output.summary} --plot {output.plot} > {log} 2>&1"


# A second QC of the weak masks, once the early-learning model exists: where a weak mask parts from
# that model's raw prediction for the same image (round 1, before snapping), the weak mask is the
# likely culprit.
rule weak_agreement:
    input:
        masks="results/weak/{shard}.npz",
        # The model's own outlines: snapped ones sit on the same edges as the weak masks whatever
        # their quality, and would agree with them for the wrong reason.
        reference=f"{ROUND_ROOT}/1/pseudo_raw/{{shard}}.npz",
        code=PKG / "qc.py",
    output:
        "results/qc/agreement/{shard}.parquet",
    params:
        threshold=CFG_QC["model_agreement_threshold"],
    log:
        "logs/qc/agreement/{shard}.log",
    benchmark:
        "results/benchmarks/qc/agreement/{shard}.tsv"
    threads: 1
    resources:
        mem_mb=shard_mem_mb(800, 0.3),
        runtime=shard_runtime(5, 0.02),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl mask-agreement --masks {input.masks} --reference {input.reference} "
        "--threshold {params.threshold} --out {output} > {log} 2>&1"


rule weak_agreement_merge:
    input:
        per_shard("results/qc/agreement/{shard}.parquet"),
    output:
        table="results/qc/weak_agreement.parquet",
        summary="results/qc/weak_agreement_summary.json",
        plot=report(
            "results/qc/weak_agreement_hist.png",
            caption="../report/qc_agreement_hist.rst",
            category="2 Quality control",
            subcategory="Weak masks",
            labels={"result": "agreement with the early-learning model"},
        ),
    params:
        threshold=CFG_QC["model_agreement_threshold"],
    log:
        "logs/qc/agreement_merge.log",
    benchmark:
        "results/benchmarks/qc_agreement_merge.tsv"
    threads: 1
    resources:
        mem_mb=cohort_mem_mb(1500, 0.01),
        runtime=cohort_runtime(5, 0.01),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl qc-merge --inputs {input} --threshold {params.threshold} "
        "--title 'Weak masks: Dice with the early-learning model' "
        "--out {output.table} --summary {output.summary} --plot {output.plot} > {log} 2>&1"


# The best-informed QC of the weak masks: the shape + stability score and the agreement with the
# early-learning model each see errors the other misses (a stopped-short apex keeps a normal shape;
# a plausible-looking wrong outline can agree with a model that learnt the cohort's habits), so
# they are combined by their cohort ranks, and a mask passes only where both pass.
rule weak_qc_combined:
    input:
        shape="results/qc/weak.parquet",
        agreement="results/qc/weak_agreement.parquet",
        code=PKG / "qc.py",
    output:
        table="results/qc/weak_combined.parquet",
        summary="results/qc/weak_combined_summary.json",
    log:
        "logs/qc/weak_combined.log",
    benchmark:
        "results/benchmarks/qc_weak_combined.tsv"
    threads: 1
    resources:
        mem_mb=cohort_mem_mb(1500, 0.01),
        runtime=cohort_runtime(5, 0.01),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl qc-combine --tables {input.shape} {input.agreement} "
        "--out {output.table} --summary {output.summary} > {log} 2>&1"
