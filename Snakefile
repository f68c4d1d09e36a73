# lungssl: label-free lung segmentation of chest X-rays.
# The rules are thin; every step is a `lungssl` subcommand (see lungssl/cli.py).

configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/synthetic.smk"
include: "rules/ingest.smk"
include: "rules/weak_masks.smk"
include: "rules/qc.smk"
include: "rules/early_learning.smk"
include: "rules/self_learning.smk"
include: "rules/final.smk"
include: "rules/supervised.smk"
include: "rules/evaluate.smk"
include: "rules/heatmaps.smk"
include: "rules/report.smk"


rule all:
    input:
        "results/manifest.parquet",
        "results/qc/weak.parquet",
        final_targets,
        report_targets,
    default_target: True
