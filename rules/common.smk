import difflib
import json
import math
import os
import shlex
from functools import lru_cache
from pathlib import Path

from snakemake.exceptions import IncompleteCheckpointException, WorkflowError
from snakemake.utils import min_version, validate

min_version("8.20")


# ---------------------------------------------------------------- config check
# A config mistake stops the workflow before any job, in one line that names the key, what is
# wrong and what is allowed (jsonschema's own report prints the whole schema).


def _key_path(path):
    """deque(["input", "extra", 0, "name"]) -> "input.extra[0].name"."""
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in path]
    return "".join(parts).lstrip(".")


def _did_you_mean(word, choices):
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_error_message(err):
    """One line for a jsonschema ValidationError of the config."""
    key, schema = _key_path(err.absolute_path), err.schema
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = list(schema.get("properties", {}))
        unknown = sorted(k for k in err.instance if k not in allowed)
        where = f"under {key}" if key else "at the top level"
        names = ", ".join(f"{key}.{k}" if key else k for k in unknown)
        return (f"config: unknown key {names}{_did_you_mean(unknown[0], allowed)}; the keys allowed {where} "
                f"are: {', '.join(allowed)}")
    if err.validator == "enum":
        allowed = err.validator_value
        return (f"config: {key} is {err.instance!r}, which is not allowed{_did_you_mean(err.instance, allowed)}; "
                f"allowed values: {', '.join(map(str, allowed))}")
    hint = f" ({schema['description']})" if isinstance(schema, dict) and schema.get("description") else ""
    return f"config: {key or 'the configuration'}: {err.message}{hint}"


try:
    validate(config, schema="../config/schema.yaml")
except WorkflowError as err:
    cause = err.__context__  # snakemake raises its WorkflowError while handling jsonschema's error
    if not (hasattr(cause, "validator") and hasattr(cause, "absolute_path")):
        raise
    raise WorkflowError(config_error_message(cause)) from None


def _check_input_folder(images, key):
    """A missing or empty input folder stops the workflow at start-up, naming the config key. (A
    folder with files but no X-rays among them fails in the scan job: see logs/ingest/scan.log.)"""
    path = Path(images)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        relative = "" if path.is_absolute() else f" (relative to the working directory {os.getcwd()})"
        raise WorkflowError(f"config: {key} = {images!r}: the input folder {what}{relative}; "
                            "set it to the folder of your X-rays")
    if not any(files for _, _, files in os.walk(path)):  # stops at the first folder holding a file
        raise WorkflowError(f"config: {key} = {images!r}: no X-ray images found: the folder is empty (no file "
                            "in it or its subfolders); set it to the folder of your X-rays")


if config["input"]["images"] != "synthetic":
    _check_input_folder(config["input"]["images"], "input.images")
for _k, _extra in enumerate(config["input"]["extra"]):
    _check_input_folder(_extra["images"], f"input.extra[{_k}].images")

# Code files are inputs of the rules they drive, so editing e.g. the weak-mask module reruns
# exactly those jobs and their dependants (mtime trigger), never ingest.
PKG = Path(workflow.basedir) / "lungssl"
SYNTHETIC_DIR = "resources/synthetic"
CFG_INGEST = config["ingest"]
SHARD_SIZE = CFG_INGEST["shard_size"]
CFG_QC = config["qc"]
USES_PRIOR = CFG_QC["method"] == "cohort"
QC_THRESHOLD = CFG_QC["cohort_threshold"] if USES_PRIOR else CFG_QC["threshold"]
QC_PRIOR = "results/qc/prior.npz"


wildcard_constraints:
    shard=r"\d{4}",


def _primary_source():
    cfg = config["input"]
    images = f"{SYNTHETIC_DIR}/images" if cfg["images"] == "synthetic" else cfg["images"]
    return {"name": "", "images": images, "preset": cfg["preset"], "masks": cfg["masks"],
            "group_regex": cfg["group_regex"]}


SOURCES = [_primary_source(), *config["input"]["extra"]]
USES_SYNTHETIC = config["input"]["images"] == "synthetic"


# ---------------------------------------------------------------- resource requests
# Every rule asks for what its jobs need, so a scheduler (profiles/slurm) gets honest requests and a
# workstation run (profiles/workstation) packs jobs safely. mem_mb (MB) and runtime (minutes) follow
# the config: shard size, working and model resolution, batch size, epochs, the data-set size once
# scanned, and whether training runs on a GPU; each retry asks for `attempt` times as much. The
# per-image constants are the dev runs' benchmarks (results/benchmarks/*.tsv; 2 CPU threads, and an
# H100 for the GPU numbers) with a margin of 2-5x.
GPUS = config["resources"]["gpus_per_training"]
PIXELS = (CFG_INGEST["size"] / 256) ** 2  # per-image cost of the image stages relative to 256 px
MODEL_PIXELS = (config["model"]["size"] / 128) ** 2  # per-image network cost relative to 128 px
CUDA_HOST_MB = 4000  # host memory of a CUDA process (training peak RSS 6.8 GB on GPU, 2.3-3.0 GB on CPU)

# Tiny bookkeeping jobs (concatenate tables, hash files, read a status, draw a report table) run on the submit host
# instead of waiting in a cluster queue for seconds of work.
localrules:
    manifest,
    qc_weak_merge,
    weak_agreement_merge,
    weak_qc_combined,
    qc_quality,
    round_status,
    round_chain,
    eval_summary,
    heatmap_merge,
    report_ingest,
    report_rounds,
    report_eval,
    report_runtimes,


def _grows(base, per_image, images, per=1):
    """base + per_image x images() / per, rounded up, times the attempt (a retry asks for more)."""
    return lambda wildcards, attempt: math.ceil((base + per_image * images() / per) * attempt)


def n_images():
    """Images in the data set, an upper bound (every file the scan found). Jobs that read per-shard
    inputs run after the scan and are planned again once it is done; until then (dry runs) their
    requests show one shard's worth."""
    try:
        return scan_info()["n_files"]
    except IncompleteCheckpointException:
        return SHARD_SIZE


def shard_mem_mb(base, per_image):
    """Memory (MB) of a per-shard job, per_image MB per image at 256 px: set by the shard size,
    never by the data-set size."""
    return _grows(base, per_image * PIXELS, lambda: SHARD_SIZE)


def shard_runtime(base, per_image_s):
    """Wall time (minutes) of a per-shard job, per_image_s seconds per image at 256 px."""
    return _grows(base, per_image_s * PIXELS, lambda: SHARD_SIZE, per=60)


def cohort_mem_mb(base, per_image):
    """Memory (MB) of a job over the whole data set (merges, evaluation)."""
    return _grows(base, per_image, n_images)


def cohort_runtime(base, per_image_s):
    return _grows(base, per_image_s, n_images, per=60)


def synthetic_runtime(base, per_image_s):
    """The synthetic set: per_image_s seconds per image at the largest side of 512 px."""
    cfg = config["synthetic"]
    return _grows(base, per_image_s * (cfg["max_size"] / 512) ** 2, lambda: cfg["n"], per=60)


def predict_mem_mb(wildcards, attempt):
    # Model, batches with flip TTA and the shard's probabilities: peak 1.3 GB on CPU at 256 images.
    return math.ceil((2500 + 0.5 * SHARD_SIZE * PIXELS + (CUDA_HOST_MB if GPUS else 0)) * attempt)


def predict_runtime(wildcards, attempt):
    # Measured 0.09 s per image on 2 CPU threads (model at 128 px, TTA), ~0.02 s on a GPU.
    per_image_s = (0.05 if GPUS else 0.5) * MODEL_PIXELS
    return math.ceil((10 + per_image_s * SHARD_SIZE / 60) * attempt)


@lru_cache(maxsize=None)
def _scan_info(path, mtime):
    return json.loads(Path(path).read_text())


def scan_info():
    """Shard list and counts written by the scan checkpoint (small JSON, not the file table)."""
    path = checkpoints.scan.get().output.info
    return _scan_info(path, Path(path).stat().st_mtime)


def shards():
    return scan_info()["shards"]


def per_shard(pattern):
    return lambda wildcards: expand(pattern, shard=shards(), **wildcards)




# ---------------------------------------------------------------- learning stages

TRAIN_KEYS = ("batch_size", "lr", "bce_weight", "qc_weight", "balance_sources", "min_qc", "hflip", "shift", "scale", "rotate",
              "brightness_contrast", "opacity", "num_workers", "min_steps_per_epoch")
ROUND_ROOT = "results/rounds"


def train_params(epochs, min_epochs=1, early_stop=False, slope_fraction=0.1, **stage_only):
    """JSON handed to `lungssl train`: the model and the training settings of one stage.
    A function of the wildcards, so that braces in a configured path are not taken for wildcards.
    stage_only: settings of one stage alone (lr_decay: final, restore_best: early learning); the other
    stages' JSON leaves them out, so that they do not change (and so retrain) them."""
    train = {k: config["train"][k] for k in TRAIN_KEYS}
    train.update(epochs=epochs, min_epochs=min(min_epochs, epochs), early_stop=early_stop,
                 slope_fraction=slope_fraction, seed=config["seed"], **stage_only)
    text = json.dumps({"model": config["model"], "train": train}, sort_keys=True)
    return lambda wildcards: text


def train_mem_mb(wildcards, attempt):
    # Libraries and model (~2.3 GB peak on CPU), the batch's activations, the image stacks (memory-
    # mapped, touched every epoch) and bit-packed targets of every image, and a CUDA process on a GPU.
    batch = config["train"]["batch_size"] * config["model"]["size"] ** 2 * 4e-4
    images = n_images() * CFG_INGEST["size"] ** 2 * 1.5e-6
    return math.ceil((2500 + batch + images + (CUDA_HOST_MB if GPUS else 0)) * attempt)


def train_runtime(epochs):
    """Wall time (minutes) of a training stage: at most `epochs` epochs over every image (QC passes
    and early stops only shorten it); an epoch has at least min_steps_per_epoch batches. Measured
    0.08-0.1 s per image and epoch on 2 CPU threads (model at 128 px), 0.0015 s on an H100."""
    per_image_s = (0.01 if GPUS else 0.2) * MODEL_PIXELS
    cfg = config["train"]

    def runtime(wildcards, attempt):
        per_epoch = max(n_images(), cfg["min_steps_per_epoch"] * cfg["batch_size"])
        return math.ceil((10 + epochs * per_epoch * per_image_s / 60) * attempt)

    return runtime


def snap_args():
    """snap-masks arguments for the rounds' pseudo-masks ("" = off: the masks are copied unchanged)."""
    px = config["self_learning"]["snap_px"]
    if not px:
        return ""
    if len(px) != 2:
        raise ValueError(f"self_learning.snap_px takes two numbers (px inside, px outside) or [], got {px}")
    weak = shlex.quote(json.dumps(config["weak_masks"], sort_keys=True))
    return f"--snap-px {px[0]} {px[1]} --weak-params {weak}"


def round_model(r):
    return f"{ROUND_ROOT}/{int(r)}/model.pt"


def round_status(r):
    """Status of round r; raises Snakemake's incomplete-checkpoint signal until it exists."""
    path = checkpoints.round_status.get(r=str(r)).output.status
    return json.loads(Path(path).read_text())


def final_round():
    # The round limit always stops the loop. A status saying "go on" there was written under other
    # settings and is read before its round is rerun; the rerun decides, and the round chain's own
    # verification (lungssl/self_learning.py) rejects a chain that really does not stop.
    max_rounds = config["self_learning"]["max_rounds"]
    for r in range(1, max_rounds):
        if round_status(r)["stop"]:
            return r
    return max_rounds


def round_files(name):
    """rounds/<r>/<name> of the rounds 1..R of the final chain.

    A job that lists the rounds also names their status.json: Snakemake re-reads the list of a job
    that takes a checkpoint's output once that checkpoint is rerun, so a rerun round whose decision
    changes (another round limit, say) reaches every list.
    """
    return [f"{ROUND_ROOT}/{r}/{name}" for r in range(1, final_round() + 1)]


def round_chain_inputs(wildcards):
    last = final_round()
    return [
        *round_files("status.json"),
        *round_files("qc.parquet"),
        *[round_model(r) for r in range(0, last)],
        *expand(f"{ROUND_ROOT}/{last}/pseudo/{{shard}}.npz", shard=shards()),
    ]


def has_ground_truth():
    return scan_info()["with_masks"] > 0


def evaluated_stages():
    stages = ["weak", *[f"round_{r}" for r in range(1, final_round() + 1)], "final"]
    if config["supervised"]["enabled"]:
        stages.append("supervised")
    return stages


def eval_tables(wildcards):
    """Every evaluated stage's table, with the round statuses that decide which stages there are."""
    return {"tables": expand("results/eval/{stage}.parquet", stage=evaluated_stages()),
            "rounds": round_files("status.json")}


def eval_predictions(wildcards):
    stage = wildcards.stage
    if stage == "weak":
        pattern, qc = "results/weak/{shard}.npz", "results/qc/weak.parquet"
    elif stage.startswith("round_"):
        r = stage.removeprefix("round_")
        pattern, qc = f"{ROUND_ROOT}/{r}/pseudo/{{shard}}.npz", f"{ROUND_ROOT}/{r}/qc.parquet"
    else:
        pattern, qc = f"results/predictions/{stage}/{{shard}}.npz", []
    return {"pred": expand(pattern, shard=shards()), "qc": qc,
            "gt": expand("results/gt/{shard}.npz", shard=shards()), "manifest": "results/manifest.parquet"}


def qc_scores():
    """label in results/eval/qc_quality.csv -> (evaluation table, QC table) of the same masks."""
    scores = {
        "weak masks: shape + stability (qc/weak)": ("results/eval/weak.parquet", "results/qc/weak.parquet"),
        "weak masks: Dice with the early-learning model (qc/weak_agreement)":
            ("results/eval/weak.parquet", "results/qc/weak_agreement.parquet"),
        "weak masks: shape + stability and the model's Dice, mean of ranks (qc/weak_combined)":
            ("results/eval/weak.parquet", "results/qc/weak_combined.parquet"),
    }
    for r in range(1, final_round() + 1):
        scores[f"round {r} pseudo-masks: shape + TTA (rounds/{r}/qc)"] = (f"results/eval/round_{r}.parquet",
                                                                         f"{ROUND_ROOT}/{r}/qc.parquet")
    return scores


def qc_quality_inputs(wildcards):
    return {f"{kind}_{i}": path for i, pair in enumerate(qc_scores().values())
            for kind, path in zip(("eval", "qc"), pair)}


def qc_quality_args(wildcards):
    # From qc_scores() itself, not from the job's input: while a later round's checkpoint is
    # pending, Snakemake hands the params a placeholder input without the named files.
    return " ".join(f"--score {shlex.quote(label)} {ev} {qc}" for label, (ev, qc) in qc_scores().items())


def final_targets(wildcards):
    # Naming every round's status here makes a deleted status file a missing target that is
    # rebuilt, instead of a hole the final stage might silently step over.
    targets = ["results/final/model.pt", *round_files("status.json"), "results/qc/weak_combined.parquet"]
    if has_ground_truth():
        targets += ["results/eval/summary.csv", "results/eval/qc_quality.csv"]
    if config["heatmaps"]["enabled"]:
        targets.append("results/heatmaps/scores.parquet")
    return targets


# ---------------------------------------------------------------- report (rules/report.smk)

REPORT_DIR = "results/report"


def chain_rounds(name):
    """round_files(name) as an input function."""
    return lambda wildcards: round_files(name)


def report_figures(wildcards):
    """Every report figure and table but the runtimes (which wait for all of them)."""
    # Asked only once the rounds' statuses are known, as in final_targets: otherwise the jobs after the
    # rounds enter the DAG before a missing status file is rebuilt, and rebuilding it (same content)
    # would retrain the final model.
    final_round()
    figures = [
        "results/ingest/summary.html",
        f"{REPORT_DIR}/pass_fraction.png",
        f"{REPORT_DIR}/qc_by_round.png",
        f"{REPORT_DIR}/overlays_sample.png",
        f"{REPORT_DIR}/overlays_worst_qc.png",
    ]
    if has_ground_truth():
        figures += ["results/eval/summary.html", "results/eval/dice.png"]
    return figures


def report_targets(wildcards):
    """The report figures and the runtime table, which waits for everything else."""
    return [*report_figures(wildcards), f"{REPORT_DIR}/runtimes.html"]


def benchmark_patterns(wildcards):
    """{rule: benchmark path pattern} of every rule, so each benchmark file is attributed to its rule."""
    return json.dumps({r.name: str(r.benchmark) for r in workflow.rules if r.benchmark}, sort_keys=True)
