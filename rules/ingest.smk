checkpoint scan:
    input:
        synthetic=f"{SYNTHETIC_DIR}/cases.csv" if USES_SYNTHETIC else [],
    output:
        files="results/ingest/files.parquet",
        info="results/ingest/scan.json",
    params:
        sources=lambda wildcards: json.dumps(SOURCES),  # a function: "{root}" in a path is no wildcard
        shard_size=SHARD_SIZE,
    log:
        "logs/ingest/scan.log",
    benchmark:
        "results/benchmarks/scan.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl scan --sources {params.sources:q} --shard-size {params.shard_size} "
        "--out {output.files} --info {output.info} > {log} 2>&1"


rule decode:
    input:
        files="results/ingest/files.parquet",
        code=PKG / "loader.py",
    output:
        table="results/ingest/shards/{shard}.parquet",
        images="results/images/{shard}.npy",
        masks="results/gt/{shard}.npz",
    params:
        size=CFG_INGEST["size"],
    log:
        "logs/ingest/decode/{shard}.log",
    benchmark:
        "results/benchmarks/decode/{shard}.tsv"
    threads: 1
    resources:
        mem_mb=shard_mem_mb(1500, 0.5),
        runtime=shard_runtime(5, 0.2),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl decode --files {input.files} --shard {wildcards.shard} --size {params.size} "
        "--table {output.table} --images {output.images} --masks {output.masks} > {log} 2>&1"


rule manifest:
    input:
        files="results/ingest/files.parquet",
        decoded=per_shard("results/ingest/shards/{shard}.parquet"),
    output:
        manifest="results/manifest.parquet",
        rejected="results/manifest_rejected.parquet",
        summary="results/ingest/summary.json",
    params:
        val_fraction=CFG_INGEST["val_fraction"],
        seed=config["seed"],
    log:
        "logs/ingest/manifest.log",
    benchmark:
        "results/benchmarks/manifest.tsv"
    threads: 1
    resources:
        mem_mb=cohort_mem_mb(1500, 0.01),
        runtime=cohort_runtime(5, 0.01),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl manifest --files {input.files} --decoded {input.decoded} "
        "--val-fraction {params.val_fraction} --seed {params.seed} --out {output.manifest} "
        "--rejected {output.rejected} --summary {output.summary} > {log} 2>&1"


rule report_ingest:
    input:
        "results/ingest/summary.json",
    output:
        report(
            "results/ingest/summary.html",
            caption="../report/ingest.rst",
            category="1 Input",
            subcategory="Files found, accepted and rejected",
            labels={"result": "table"},
        ),
    log:
        "logs/ingest/report.log",
    benchmark:
        "results/benchmarks/report_ingest.tsv"
    threads: 1
    resources:
        mem_mb=1000,  # a few counts
        runtime=5,
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl report-ingest --summary {input} --out {output} > {log} 2>&1"
