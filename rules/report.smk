# The figures and tables of `snakemake --report report.html` that span stages: QC and pass fraction
# across the self-learning rounds, overlay grids of image / weak mask / final mask / heatmap, and
# the runtime of every rule. Stage-bound ones sit with their stage (report_ingest, report_eval).
# A normal run makes them all (rule all), so the report only collects files that already exist.


rule report_rounds:
    input:
        chain=f"{ROUND_ROOT}/chain.json",  # the verified chain: the rounds below are those of the final model
        statuses=chain_rounds("status.json"),
        round_qc=chain_rounds("qc.parquet"),
        weak_qc="results/qc/weak.parquet",
        manifest="results/manifest.parquet",
    output:
        plot=report(
            f"{REPORT_DIR}/pass_fraction.png",
            caption="../report/pass_fraction.rst",
            category="3 Learning",
            subcategory="2 Self-learning rounds",
            labels={"result": "QC pass fraction per round"},
        ),
        hist=report(
            f"{REPORT_DIR}/qc_by_round.png",
            caption="../report/qc_by_round.rst",
            category="2 Quality control",
            subcategory="Weak masks and every round's pseudo-masks",
            labels={"result": "QC score histograms per stage"},
        ),
    params:
        threshold=QC_THRESHOLD,
        target=config["self_learning"]["target_pass"],
    log:
        "logs/report/rounds.log",
    benchmark:
        "results/benchmarks/report_rounds.tsv"
    threads: 1
    resources:
        mem_mb=cohort_mem_mb(1000, 0.01),  # the QC tables of every round
        runtime=5,
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl report-rounds --manifest {input.manifest} --weak-qc {input.weak_qc} "
        "--statuses {input.statuses} --round-qc {input.round_qc} --threshold {params.threshold} "
        "--target-pass {params.target} --plot {output.plot} --hist {output.hist} > {log} 2>&1"


rule report_overlays:
    input:
        manifest="results/manifest.parquet",
        qc="results/qc/weak.parquet",
        images=per_shard("results/images/{shard}.npy"),
        weak=per_shard("results/weak/{shard}.npz"),
        final=per_shard("results/predictions/final/{shard}.npz"),
        heat=per_shard("results/heatmaps/{shard}.npz") if config["heatmaps"]["enabled"] else [],
    output:
        sample=report(
            f"{REPORT_DIR}/overlays_sample.png",
            caption="../report/overlays.rst",
            category="4 Masks",
            subcategory="Overlays",
            labels={"result": "seeded sample"},
        ),
        worst=report(
            f"{REPORT_DIR}/overlays_worst_qc.png",
            caption="../report/overlays.rst",
            category="4 Masks",
            subcategory="Overlays",
            labels={"result": "lowest weak-mask QC scores"},
        ),
    params:
        rows=config["report"]["overlay_rows"],
        seed=config["seed"],
        flag_z=config["heatmaps"]["flag_z"],
        heat=lambda wildcards, input: f"--heat {' '.join(input.heat)}" if input.heat else "",
    log:
        "logs/report/overlays.log",
    benchmark:
        "results/benchmarks/report_overlays.tsv"
    threads: 1
    resources:
        mem_mb=shard_mem_mb(1500, 0.3),  # one shard's stacks at a time
        runtime=shard_runtime(5, 0.01),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl report-overlays --manifest {input.manifest} --qc {input.qc} --images {input.images} "
        "--weak {input.weak} --final {input.final} {params.heat} --flag-z {params.flag_z} --rows {params.rows} "
        "--seed {params.seed} --sample {output.sample} --worst {output.worst} > {log} 2>&1"


rule report_runtimes:
    input:
        # everything else a run makes, so that every other job's benchmark file is written first
        final_targets,
        report_figures,
    output:
        table=report(
            f"{REPORT_DIR}/runtimes.html",
            caption="../report/runtimes.rst",
            category="7 Runtime",
            subcategory="Per rule",
            labels={"result": "table"},
        ),
        plot=report(
            f"{REPORT_DIR}/runtimes.png",
            caption="../report/runtimes.rst",
            category="7 Runtime",
            subcategory="Per rule",
            labels={"result": "wall time per rule"},
        ),
    params:
        benchmarks="results/benchmarks",
        patterns=benchmark_patterns,
    log:
        "logs/report/runtimes.log",
    benchmark:
        "results/benchmarks/report_runtimes.tsv"  # left out of its own table
    threads: 1
    resources:
        mem_mb=1000,  # one small table per job
        runtime=5,
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl report-runtimes --benchmarks {params.benchmarks} --patterns {params.patterns:q} "
        "--exclude report_runtimes --table {output.table} --plot {output.plot} > {log} 2>&1"
