# Heatmaps of suspicious opacities inside the lungs: atlas codes per shard -> normal lung model
# from the cohort -> heatmap, overlays and scores per shard -> merged scores (+ ROC where labelled).

CFG_HEAT = config["heatmaps"]
HEAT_PARAMS = json.dumps(
    {k: CFG_HEAT[k] for k in ("reference_fraction", "max_reference", "blur", "flag_z")},
    sort_keys=True,
)


rule heatmap_codes:
    input:
        images="results/images/{shard}.npy",
        masks="results/predictions/final/{shard}.npz",
        table="results/ingest/shards/{shard}.parquet",
        code=PKG / "heatmaps.py",
    output:
        "results/heatmaps/codes/{shard}.npz",
    params:
        heat=HEAT_PARAMS,
    log:
        "logs/heatmaps/codes/{shard}.log",
    benchmark:
        "results/benchmarks/heatmaps/codes/{shard}.tsv"
    threads: 1
    resources:
        mem_mb=shard_mem_mb(800, 0.3),
        runtime=shard_runtime(5, 0.02),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl heatmap-codes --images {input.images} --masks {input.masks} --table {input.table} "
        "--params {params.heat:q} --out {output} > {log} 2>&1"


rule heatmap_model:
    input:
        codes=per_shard("results/heatmaps/codes/{shard}.npz"),
        manifest="results/manifest.parquet",
    output:
        "results/heatmaps/normal_model.npz",
    params:
        heat=HEAT_PARAMS,
        normal=f"--normal-label {CFG_HEAT['normal_label']}" if CFG_HEAT["normal_label"] else "",
        seed=config["seed"],
    log:
        "logs/heatmaps/model.log",
    benchmark:
        "results/benchmarks/heatmap_model.tsv"
    threads: 1
    resources:
        # the reference atlases (float32, grid x grid) bound the memory, not the data set
        mem_mb=lambda wildcards, attempt: int((1000 + CFG_HEAT["max_reference"] * 0.02) * attempt),
        runtime=15,
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl heatmap-model --codes {input.codes} --manifest {input.manifest} --params {params.heat:q} "
        "{params.normal} --seed {params.seed} --out {output} > {log} 2>&1"


rule heatmap:
    input:
        images="results/images/{shard}.npy",
        masks="results/predictions/final/{shard}.npz",
        table="results/ingest/shards/{shard}.parquet",
        model="results/heatmaps/normal_model.npz",
        code=PKG / "heatmaps.py",
    output:
        heat="results/heatmaps/{shard}.npz",
        scores="results/heatmaps/scores/{shard}.parquet",
        overlays=directory("results/heatmaps/overlays/{shard}"),
    params:
        heat=HEAT_PARAMS,
    log:
        "logs/heatmaps/{shard}.log",
    benchmark:
        "results/benchmarks/heatmaps/{shard}.tsv"
    threads: 1
    resources:
        mem_mb=shard_mem_mb(800, 0.5),
        runtime=shard_runtime(5, 0.05),
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl heatmap --images {input.images} --masks {input.masks} --table {input.table} "
        "--model {input.model} --params {params.heat:q} --out {output.heat} --scores {output.scores} "
        "--overlays {output.overlays} > {log} 2>&1"


rule heatmap_merge:
    input:
        scores=per_shard("results/heatmaps/scores/{shard}.parquet"),
        manifest="results/manifest.parquet",
    output:
        scores="results/heatmaps/scores.parquet",
        auc="results/heatmaps/auc.csv",
        roc=report(
            "results/heatmaps/roc.png",
            caption="../report/heatmap_roc.rst",
            category="6 Heatmaps",
            subcategory="ROC of the heatmap score",
            labels={"result": "ROC curve"},
        ),
    params:
        positive=CFG_HEAT["positive_label"],
        negative=CFG_HEAT["negative_label"],
    log:
        "logs/heatmaps/merge.log",
    benchmark:
        "results/benchmarks/heatmap_merge.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/lungssl.yaml"
    shell:
        "lungssl heatmap-merge --inputs {input.scores} --manifest {input.manifest} "
        "--positive {params.positive:q} --negative {params.negative:q} --out {output.scores} "
        "--auc {output.auc} --roc {output.roc} > {log} 2>&1"
