rule weak_masks:
    input:
        table="results/ingest/shards/{shard}.parquet",
        images="results/images/{shard}.npy",
        code=PKG / "weak_masks.py",
    output:
        masks="results/weak/{shard}.npz",
        stats="results/weak/{shard}.parquet",
    params:
        weak=json.dumps(config["weak_masks"], sort_keys=True),
    log:
        "logs/weak_masks/{shard}.log",
    benchmark:
        "results/benchmarks/weak_masks/{shard}.tsv"
    threads: 1
    resources:
        mem_mb=shard_mem_mb(800, 0.3),
        runtime=shard_runtime(5, 0.1),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl weak-masks --images {input.images} --table {input.table} --params {params.weak:q} "
        "--out {output.masks} --stats {output.stats} > {log} 2>&1"
