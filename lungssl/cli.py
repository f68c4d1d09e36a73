"""The `lungssl` command: one subcommand per workflow step, usable with or without Snakemake.

Each handler only reads its inputs, calls the phase module's pure functions and writes its
outputs atomically; the science lives in the phase modules.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lungssl import __version__
from lungssl.self_learning import BrokenRoundChain
from lungssl.storage import (mask_stack_size, merge_parquet, read_image_stack, read_mask_stack, write_csv,
                             write_image_stack, write_json, write_mask_stack, write_parquet)

log = logging.getLogger("lungssl")


# ---------------------------------------------------------------- handlers

def cmd_synth(a: argparse.Namespace) -> None:
    from lungssl.synthetic import write_dataset

    t0 = time.perf_counter()
    cases = write_dataset(Path(a.out), n=a.n, seed=a.seed, hard_fraction=a.hard_fraction,
                          min_size=a.min_size, max_size=a.max_size)
    log.info("wrote %d synthetic radiographs (%d hard) to %s in %.1f s", len(cases),
             int((cases["hard"].fillna("") != "").sum()), a.out, time.perf_counter() - t0)


def cmd_scan(a: argparse.Namespace) -> None:
    from lungssl.ingest import Source, scan_sources

    sources = [Source.from_config(s) for s in json.loads(a.sources)]
    files = scan_sources(sources, a.shard_size)
    write_parquet(files, a.out)
    write_json({"n_files": len(files), "shards": sorted(files["shard"].unique()),
                "with_masks": int((files["mask_paths"].str.len() > 0).sum())}, a.info)
    log.info("found %d image files in %d shard(s); %d with ground-truth masks", len(files),
             files["shard"].nunique(), int((files["mask_paths"].str.len() > 0).sum()))


def cmd_decode(a: argparse.Namespace) -> None:
    from lungssl.ingest import decode_shard

    files = pd.read_parquet(a.files, filters=[("shard", "==", a.shard)])  # this shard's rows only
    table, images, mask_ids, masks = decode_shard(files, a.size)
    write_image_stack(a.images, images)
    write_mask_stack(a.masks, mask_ids, masks)
    write_parquet(table, a.table)
    log.info("shard %s: %d accepted, %d rejected, %d with masks", a.shard, int(table["accepted"].sum()),
             int((~table["accepted"]).sum()), len(mask_ids))


def cmd_manifest(a: argparse.Namespace) -> None:
    from lungssl.ingest import build_manifest, mask_problems, split_note

    files = pd.read_parquet(a.files)
    decoded = pd.concat([pd.read_parquet(p) for p in a.decoded], ignore_index=True)
    manifest, rejected = build_manifest(files, decoded, a.val_fraction, a.seed)
    if manifest.empty:
        reasons = rejected["reason"].value_counts().head(5).to_dict()
        raise ValueError(f"none of the {len(files)} input files could be used; reasons: {reasons}")
    write_parquet(rejected, a.rejected)
    write_parquet(manifest, a.out)
    summary = {"found": len(files), "accepted": len(manifest), "rejected": len(rejected),
               "rejected_reasons": rejected["reason"].value_counts().to_dict(),
               "with_masks": int(manifest["has_mask"].sum()),
               "split": manifest["split"].value_counts().to_dict(), "patients": int(manifest["group"].nunique()),
               "masks_set_aside": mask_problems(manifest),
               "split_note": split_note(dict(zip(manifest["group"], manifest["split"])))}
    if summary["split_note"]:
        log.warning("%s", summary["split_note"])
    write_json(summary, a.summary)
    log.info("manifest: %s", json.dumps(summary))


def _accepted_rows(table_path: str) -> pd.DataFrame:
    """A shard's ingest table, accepted images only, in the order of its image stack."""
    table = pd.read_parquet(table_path)
    return table[table["accepted"]].sort_values("row")


def cmd_weak_masks(a: argparse.Namespace) -> None:
    from lungssl.qc import FILM_COLUMNS
    from lungssl.weak_masks import WeakMaskParams, film_fractions, weak_masks_with_stability

    params = WeakMaskParams.from_config(json.loads(a.params))
    table = _accepted_rows(a.table)
    images = read_image_stack(a.images)
    t0 = time.perf_counter()
    masks, stability = weak_masks_with_stability(images, params, progress=True)
    dt = time.perf_counter() - t0
    ids = table["image_id"].tolist()
    write_mask_stack(a.out, ids, masks)
    # stability: mean IoU of each mask with its perturbed re-derivations (NaN if switched off);
    # the QC combines it with the shape score.
    stats = pd.DataFrame({"image_id": ids, "area_fraction": masks.reshape(len(masks), -1).mean(axis=1)
                          if len(masks) else [], "stability": np.asarray(stability, dtype=float)})
    # The film box (image fractions): the QC measures a mask's placement inside it, not the image.
    films = [film_fractions(im, params.pair_padding_tolerance) for im in images]
    for k, name in enumerate(FILM_COLUMNS):
        stats[name] = [f[k] for f in films]
    write_parquet(stats, a.stats)
    log.info("weak masks for %d images in %.1f s (%.1f images/s)", len(ids), dt, len(ids) / max(dt, 1e-9))


def cmd_shape_prior(a: argparse.Namespace) -> None:
    from lungssl.qc import QCParams, build_shape_prior, save_prior

    QCParams.from_config(json.loads(a.params))  # a wrong setting fails here, not at predict time
    judging = {"qc": json.loads(a.params), "film_tolerance": a.film_tolerance}
    # build_shape_prior takes one film per mask in lockstep, so tee holds at most one pair.
    pairs, copy = itertools.tee(_sampled_masks(a.masks, a.films, a.max_masks, a.seed))
    prior = build_shape_prior((m for m, _ in pairs), films=(f for _, f in copy))
    save_prior(dataclasses.replace(prior, judging=judging), a.out)
    log.info("shape prior from %d distinct non-empty masks (%d exact duplicates left out), %d kept as "
             "self-consistent", prior.n_masks, prior.n_duplicates, prior.n_kept)


def _sampled_masks(paths: list[str], film_paths: list[str] | None, max_masks: int, seed: int):
    """A seeded sample of at most max_masks (mask, film box) pairs, streamed shard by shard (memory
    stays bounded); film_paths: the shards' weak-mask stats, in the same order as paths (None:
    every film is the whole image)."""
    from lungssl.qc import FULL_FILM, films_for

    if film_paths is not None and len(film_paths) != len(paths):
        raise ValueError(f"{len(paths)} mask stacks but {len(film_paths)} film tables")
    counts = [mask_stack_size(p) for p in paths]
    keep_share = min(1.0, max_masks / max(sum(counts), 1))
    rng = np.random.default_rng(seed)
    for k, path in enumerate(paths):
        ids, masks = read_mask_stack(path)
        boxes = films_for(ids, pd.read_parquet(film_paths[k])) if film_paths else [FULL_FILM] * len(ids)
        yield from ((m, box) for m, box in zip(masks, boxes) if rng.random() < keep_share)


def cmd_qc(a: argparse.Namespace) -> None:
    from lungssl.qc import QCParams, agreement_for, films_for, load_prior, qc_table

    params = QCParams.from_config(json.loads(a.params))
    ids, masks = read_mask_stack(a.masks)
    column = a.agreement or params.agreement
    agreement = agreement_for(ids, pd.read_parquet(a.stats), column) if a.stats and column else None
    films = films_for(ids, pd.read_parquet(a.films)) if a.films else None
    table = qc_table(ids, masks, params, load_prior(a.prior) if a.prior else None, agreement, films)
    write_parquet(table, a.out)
    log.info("QC: %d of %d masks pass", int(table["qc_pass"].sum()), len(table))


def cmd_qc_merge(a: argparse.Namespace) -> None:
    from lungssl.plots import score_histogram
    from lungssl.qc import summarize

    table = merge_parquet(a.inputs, a.out, keep=["image_id", "qc_score", "qc_pass"])
    summary = summarize(table, a.threshold)
    write_json(summary, a.summary)
    score_histogram(table["qc_score"].to_numpy(), a.threshold, a.plot, title=a.title)
    log.info("QC merged: %s", json.dumps(summary))


def cmd_qc_combine(a: argparse.Namespace) -> None:
    from lungssl.qc import combine_ranks, summarize

    names = [Path(t).stem for t in a.tables]
    if len(set(names)) != len(names):
        raise ValueError(f"QC tables need distinct file names, got {', '.join(names)}")
    table = combine_ranks({n: pd.read_parquet(t, columns=["image_id", "qc_score", "qc_pass"])
                           for n, t in zip(names, a.tables)})
    write_parquet(table, a.out)
    summary = summarize(table, None)
    write_json(summary, a.summary)
    log.info("QC combined from %s: %s", ", ".join(names), json.dumps(summary))


def cmd_mask_agreement(a: argparse.Namespace) -> None:
    from lungssl.qc import model_agreement

    ids, masks = read_mask_stack(a.masks)
    ref_ids, refs = read_mask_stack(a.reference)
    table = model_agreement(ids, masks, ref_ids, refs, a.threshold)
    write_parquet(table, a.out)
    log.info("agreement with the reference: median Dice %.3f, %d of %d masks >= %.2f",
             table["qc_score"].median(), int(table["qc_pass"].sum()), len(table), a.threshold)


def cmd_qc_quality(a: argparse.Namespace) -> None:
    from lungssl.evaluation import GOOD_DICE, qc_quality

    rows = []
    for label, eval_path, qc_path in a.score:
        truth = pd.read_parquet(eval_path, columns=["image_id", "dice"])
        qc = pd.read_parquet(qc_path, columns=["image_id", "qc_score", "qc_pass"])
        rows.append({"qc": label, **qc_quality(truth.merge(qc, on="image_id", how="inner")), "good_dice": GOOD_DICE})
    table = pd.DataFrame(rows)
    write_csv(table, a.out, float_format="%.4f")
    log.info("QC against the true Dice:\n%s", table.to_string(index=False))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from lungssl.evaluation import evaluate_masks

    frames = []
    for pred_path, gt_path in zip(a.pred, a.gt, strict=True):
        pred_ids, preds = read_mask_stack(pred_path)
        gt_ids, truths = read_mask_stack(gt_path)
        frames.append(evaluate_masks(pred_ids, preds, gt_ids, truths, a.stage))
    table = pd.concat(frames, ignore_index=True)
    split = pd.read_parquet(a.manifest, columns=["image_id", "split"])
    table = table.merge(split, on="image_id", how="left")
    if a.qc:
        qc = pd.read_parquet(a.qc)[["image_id", "qc_score", "qc_pass"]]
        table = table.merge(qc, on="image_id", how="left")
    write_parquet(table, a.out)
    log.info("evaluated %d images for stage %s: mean Dice %.4f", len(table), a.stage, table["dice"].mean())


def cmd_eval_summary(a: argparse.Namespace) -> None:
    from lungssl.evaluation import summary_rows

    tables = [pd.read_parquet(p) for p in a.inputs]
    summary = summary_rows(tables)
    write_csv(summary, a.out, float_format="%.4f")
    log.info("evaluation summary:\n%s", summary.to_string(index=False))


def _train_params(a: argparse.Namespace):
    from lungssl.modeling import ModelSpec
    from lungssl.training import TrainParams

    cfg = json.loads(a.params)
    return ModelSpec.from_config(cfg["model"], cfg["model"]["size"]), TrainParams.from_config(cfg["train"])


def cmd_train(a: argparse.Namespace) -> None:
    from lungssl.plots import learning_curve
    from lungssl.training import check_trainable, collect_targets, train_model

    spec, params = _train_params(a)
    meta = {"stage": a.stage}
    if a.chain:
        meta.update(_use_chain(a))
    if not a.targets:
        raise ValueError("give --targets (or --chain for the final stage)")
    manifest = pd.read_parquet(a.manifest)
    stacks = {Path(p).stem: Path(p) for p in a.images}
    qc = pd.read_parquet(a.qc) if a.qc else None
    targets = [Path(p) for p in a.targets]
    sets = collect_targets(manifest, stacks, targets, ("train", "val"), spec.size, qc, params.min_qc)
    train, val = sets["train"], sets["val"]
    check_trainable(a.stage, train, manifest, qc, params.min_qc)
    log.info("%s: %d training and %d validation targets", a.stage, len(train.table), len(val.table))
    metrics = train_model(train, val, spec, params, Path(a.out), Path(a.state),
                          Path(a.init) if a.init else None, a.threads, meta, device=a.device)
    write_parquet(metrics, a.metrics)
    learning_curve(metrics, a.plot, title=a.stage)


def _use_chain(a: argparse.Namespace) -> dict:
    """The final stage trains on what the verified round chain names, and re-checks it first."""
    from lungssl.self_learning import check_chain_record

    record = json.loads(Path(a.chain).read_text())
    check_chain_record(record)
    a.targets, a.qc, a.init = record["targets"], record["qc"], record["init"]
    log.info("final stage: round %d of the self-learning loop (%s)", record["round"], record["reason"])
    return {"round": record["round"], "round_pass_fraction": record["pass_fraction"]}


def cmd_round_chain(a: argparse.Namespace) -> None:
    from lungssl.self_learning import chain_record

    record = chain_record([Path(p) for p in a.inputs])
    write_json(record, a.out)
    log.info("round chain verified: %d round(s); %s", record["round"], record["reason"])


def cmd_predict_shard(a: argparse.Namespace) -> None:
    import torch

    from lungssl.inference import lung_mask, predict_probs
    from lungssl.modeling import load_model, pick_device

    from lungssl.progress import Progress

    torch.set_num_threads(max(1, a.threads))
    device = pick_device(a.device)
    model, spec, _ = load_model(a.model, device)
    table = _accepted_rows(a.table)
    images = read_image_stack(a.images)
    log.info("predicting %d images on %s", len(images), device)
    with Progress(len(images), "predict") as progress:
        probs, agree = predict_probs(model, images, spec, device, a.batch_size, tta=not a.no_tta,
                                     progress=progress)
    n = images.shape[1] if len(images) else spec.size
    masks = np.stack([lung_mask(p, im) for p, im in zip(probs, images)]) if len(probs) \
        else np.zeros((0, n, n), bool)
    ids = table["image_id"].tolist()
    write_mask_stack(a.out, ids, masks)
    confidence = [float(np.mean(np.abs(p - 0.5)) * 2) for p in probs]
    write_parquet(pd.DataFrame({"image_id": ids, "tta_dice": agree, "confidence": confidence}), a.stats)
    log.info("predicted %d masks", len(ids))


def cmd_snap_masks(a: argparse.Namespace) -> None:
    from lungssl.weak_masks import WeakMaskParams, snap_to_edges

    ids, masks = read_mask_stack(a.masks)
    images = read_image_stack(a.images)
    expected = _accepted_rows(a.table)["image_id"].tolist()
    if ids != expected:
        raise ValueError(f"{a.masks} does not hold the masks of {a.table}'s images in its order")
    if a.snap_px:
        params = WeakMaskParams.from_config(json.loads(a.weak_params))
        masks = np.stack([snap_to_edges(im, m, params, *a.snap_px) for im, m in zip(images, masks)]) \
            if len(masks) else masks
        log.info("snapped %d masks to the image edges (%d px inside, %d px outside)", len(ids), *a.snap_px)
    else:
        log.info("snapping is off: %d masks copied unchanged", len(ids))
    write_mask_stack(a.out, ids, masks)


def cmd_round_status(a: argparse.Namespace) -> None:
    from lungssl.qc import summarize
    from lungssl.self_learning import round_status, write_status

    qc = merge_parquet(a.qc, a.qc_out, keep=["image_id", "qc_score", "qc_pass"])
    manifest = pd.read_parquet(a.manifest, columns=["image_id", "split"])
    status = round_status(a.round, qc, manifest, Path(a.model), Path(a.qc_out), a.target_pass,
                          a.min_rounds, a.max_rounds)
    write_status(status, Path(a.out))
    log.info("round %d: %d of %d training pseudo-masks pass QC (%.1f%%); %s -> %s", status.round, status.n_pass,
             status.n_train, 100 * status.pass_fraction, status.reason, "stop" if status.stop else "continue")
    log.info("QC: %s", json.dumps(summarize(qc, float("nan"))))


def _heat_params(a: argparse.Namespace):
    from lungssl.heatmaps import HeatmapParams

    return HeatmapParams.from_config(json.loads(a.params))


def _shard_inputs(a: argparse.Namespace) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, images, masks) of one shard, the masks checked to belong to the images."""
    table = _accepted_rows(a.table)
    ids, masks = read_mask_stack(a.masks)
    if ids != table["image_id"].tolist():
        raise ValueError(f"{a.masks} does not hold the masks of the images of {a.table}")
    return ids, read_image_stack(a.images), masks


def cmd_heatmap_codes(a: argparse.Namespace) -> None:
    from lungssl.heatmaps import image_code
    from lungssl.storage import write_npz

    p = _heat_params(a)
    ids, images, masks = _shard_inputs(a)
    codes = [image_code(np.asarray(im), m, p) for im, m in zip(images, masks)]
    atlases = np.stack([c.atlas for c in codes]) if codes else np.zeros((0, p.grid, p.grid), np.float32)
    write_npz(a.out, ids=np.asarray(ids, dtype=str), atlas=atlases.astype(np.float16),
              deficit=np.asarray([c.deficit for c in codes], np.float32))
    log.info("atlas codes of %d images", len(ids))


def cmd_heatmap_model(a: argparse.Namespace) -> None:
    from lungssl.heatmaps import choose_reference, fit_normal_model

    p = _heat_params(a)
    ids, deficits, where = [], [], []
    for k, path in enumerate(a.codes):
        with np.load(path) as z:
            ids += [str(i) for i in z["ids"]]
            deficits.append(z["deficit"])
            where += [(k, i) for i in range(len(z["ids"]))]
    deficits = np.concatenate(deficits) if deficits else np.zeros(0)
    if a.normal_label:
        labels = pd.read_parquet(a.manifest, columns=["image_id", "label"]).set_index("image_id")["label"]
        chosen = np.flatnonzero(labels.reindex(ids).eq(a.normal_label).to_numpy())
        if chosen.size == 0:
            raise ValueError(f"no image carries the label {a.normal_label!r} given as heatmaps.normal_label")
        how = f"the {chosen.size} images labelled {a.normal_label!r}"
    else:
        chosen = choose_reference(deficits, p, a.seed)
        how = f"the {chosen.size} images (of {len(ids)}) whose lung field the mask fills most completely"
    model = fit_normal_model(_gather_atlases(a.codes, [where[i] for i in chosen]), p)
    model.save(a.out)
    log.info("normal lung model from %s", how)


def _gather_atlases(paths: list[str], picks: list[tuple[int, int]]) -> np.ndarray:
    # One shard file open at a time: memory follows the reference size, not the data set's.
    by_file: dict[int, list[int]] = {}
    for k, i in picks:
        by_file.setdefault(k, []).append(i)
    parts = []
    for k, rows in sorted(by_file.items()):
        with np.load(paths[k]) as z:
            parts.append(z["atlas"][rows].astype(np.float32))
    return np.concatenate(parts)


def cmd_heatmap(a: argparse.Namespace) -> None:
    from lungssl.heatmaps import SCORE_COLUMNS, NormalModel, draw_heat_overlay, heatmap_with_scores, quantise
    from lungssl.progress import Progress
    from lungssl.storage import write_heat_stack, write_png

    p = _heat_params(a)
    model = NormalModel.load(a.model)
    ids, images, masks = _shard_inputs(a)
    overlays = Path(a.overlays)
    overlays.mkdir(parents=True, exist_ok=True)
    heats, rows = [], []
    with Progress(len(ids), "heatmaps") as progress:
        for image_id, im, m in zip(ids, images, masks):
            z, scores = heatmap_with_scores(np.asarray(im), m, model, p)
            heats.append(quantise(z))
            rows.append({"image_id": image_id, **scores})
            write_png(overlays / f"{image_id}.png", draw_heat_overlay(np.asarray(im), z, p.flag_z))
            progress.update()
    write_heat_stack(a.out, ids, heats, side=images.shape[1] if len(images) else 0)
    write_parquet(pd.DataFrame(rows, columns=["image_id", *SCORE_COLUMNS]), a.scores)
    log.info("heatmaps of %d images", len(ids))


def cmd_heatmap_merge(a: argparse.Namespace) -> None:
    from lungssl.heatmaps import auc_table
    from lungssl.plots import roc_plot

    scores = pd.concat([pd.read_parquet(p) for p in a.inputs], ignore_index=True)
    write_parquet(scores, a.out)
    manifest = pd.read_parquet(a.manifest, columns=["image_id", "label", "rel_path"])
    aucs = auc_table(scores, manifest, a.positive, a.negative)
    write_csv(aucs, a.auc)
    roc_plot(scores, manifest, a.positive, a.negative, a.roc)
    log.info("heatmap scores of %d images; ROC AUC: %s", len(scores),
             aucs.to_dict("records") if len(aucs) else f"not measured (no {a.positive}/{a.negative} labels)")


# ---------------------------------------------------------------- report figures and tables

def _write_html(path: str, text: str) -> None:
    from lungssl.storage import write_bytes

    write_bytes(path, text.encode())


def cmd_report_ingest(a: argparse.Namespace) -> None:
    from lungssl.report import html_page, ingest_sections

    summary = json.loads(Path(a.summary).read_text())
    _write_html(a.out, html_page("Input: files found, accepted and rejected", ingest_sections(summary)))
    log.info("input summary: %d found, %d accepted, %d rejected", summary["found"], summary["accepted"],
             summary["rejected"])


def cmd_report_eval(a: argparse.Namespace) -> None:
    from lungssl.plots import dice_plot
    from lungssl.report import dice_by_stage, eval_sections, html_page

    summary = pd.read_csv(a.summary)
    notes = ["Ground truth is used only here, to measure. Label-free stages first; the supervised reference "
             "(the same network trained on the ground-truth masks) is greyed, for comparison."]
    _write_html(a.table, html_page("Evaluation against the ground truth", eval_sections(summary), notes))
    dice_plot(dice_by_stage(pd.read_parquet(p) for p in a.inputs), a.plot)
    log.info("evaluation table and Dice distributions of %d stages", len(a.inputs))


def cmd_report_rounds(a: argparse.Namespace) -> None:
    from lungssl.plots import pass_fraction_plot, stage_histograms
    from lungssl.self_learning import pass_fractions

    manifest = pd.read_parquet(a.manifest, columns=["image_id", "split"])
    weak = pd.read_parquet(a.weak_qc)
    rounds = pass_fractions(weak, manifest, [Path(p) for p in a.statuses])
    pass_fraction_plot(rounds, a.target_pass, a.plot)
    scores = {"Weak masks": weak["qc_score"].to_numpy()}
    for path in sorted(a.round_qc, key=lambda p: int(Path(p).parent.name)):
        scores[f"Round {Path(path).parent.name} pseudo-masks"] = pd.read_parquet(path)["qc_score"].to_numpy()
    stage_histograms(scores, a.threshold, a.hist)
    log.info("pass fraction per round:\n%s", rounds.to_string(index=False))


def cmd_report_overlays(a: argparse.Namespace) -> None:
    from lungssl.plots import overlay_grid
    from lungssl.report import gather_panels, pick_images

    def by_shard(paths):
        return {Path(p).stem: Path(p) for p in paths} if paths else None

    picks = pick_images(pd.read_parquet(a.manifest), pd.read_parquet(a.qc), a.rows, a.seed)
    flag_z = a.flag_z if a.heat else None
    for name, title, out in (("sample", f"Seeded sample of {a.rows} images (seed {a.seed})", a.sample),
                             ("worst_qc", f"The {a.rows} weak masks with the lowest QC scores", a.worst)):
        panels = gather_panels(picks[name], by_shard(a.images), by_shard(a.weak), by_shard(a.final), by_shard(a.heat))
        overlay_grid(panels, out, title, flag_z)
        log.info("%s: %s", name, ", ".join(picks[name]["image_id"]))


def cmd_report_runtimes(a: argparse.Namespace) -> None:
    from lungssl.plots import runtime_plot
    from lungssl.report import html_page, runtime_table

    paths = sorted(Path(a.benchmarks).rglob("*.tsv"))
    table = runtime_table(paths, json.loads(a.patterns), exclude=a.exclude)
    total = table["total_s"].sum()
    notes = [f"{int(table['jobs'].sum())} jobs, {total:,.0f} s of wall time summed over jobs (jobs run in "
             "parallel, so the run took less), from the benchmark files in " + a.benchmarks + ". Peak memory is "
             "the largest resident set size of one job."]
    runtime_plot(table, a.plot)
    shown = table.rename(columns={"total_s": "wall s (sum)", "max_s": "wall s (longest job)",
                                  "max_rss_mb": "peak memory (MB)", "cpu_s": "CPU s (sum)"})
    _write_html(a.table, html_page("Runtime per rule", [("Rules, longest first", shown, "")], notes))
    log.info("runtimes of %d rules from %d benchmark files", len(table), len(paths))


def cmd_predict(a: argparse.Namespace) -> int:
    from lungssl.inference import predict_folder

    output = Path(a.output)
    n_ok, rejected = predict_folder(Path(a.model), [Path(p) for p in a.input], output,
                                    overlay=a.overlay, device=a.device, batch_size=a.batch_size,
                                    lr_labels=a.lr_labels, heat_model=a.heatmaps, truth=a.truth,
                                    qc_prior=a.qc)
    if rejected and not n_ok:
        reasons = pd.Series([r for _, r in rejected]).value_counts().head(3)
        raise ValueError(f"none of the {len(rejected)} input files could be read ("
                         + "; ".join(f"{n} x {reason}" for reason, n in reasons.items())
                         + f"); see {output / 'rejected.csv'}")
    log.info("wrote %d masks to %s", n_ok, output)
    if rejected:
        log.warning("%d of %d input files could not be read and were skipped (exit code %d); their reasons are in %s",
                    len(rejected), len(rejected) + n_ok, EXIT_PARTIAL, output / "rejected.csv")
        return EXIT_PARTIAL
    return EXIT_OK


# ---------------------------------------------------------------- parser

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3

MAIN_EPILOG = """\
Most people need two commands: `snakemake --cores all` runs the whole workflow (its rules call
the other subcommands, one job each), and `lungssl predict` segments any X-rays with its model.

Examples:
  lungssl predict --model results/final/model.pt --input xrays/ --output masks/ --overlay
  lungssl predict --help

Exit codes:
  0  success
  1  error: the command could not do its work (missing or empty input, unreadable model file,
     GPU asked for but absent, nothing to train on, ...); one line "lungssl: error: ..." on
     stderr says why and what to do
  2  usage error: unknown option, missing or malformed argument (argparse's own)
  3  predict only: some inputs could not be read and were skipped (listed with their reasons
     in OUTPUT/rejected.csv); all the others were written

Logging goes to stderr (a workflow rule sends it to its file under logs/); on a terminal long
steps show a progress bar, elsewhere a progress line every LUNGSSL_PROGRESS_SECONDS (30) s.
--debug shows the Python traceback of an error."""


def _shard_args(p: argparse.ArgumentParser) -> None:
    """--images and --table of one shard: the rows of the stack are the table's accepted images, in order."""
    p.add_argument("--images", required=True, help="the shard's image stack (results/images/{shard}.npy)")
    p.add_argument("--table", required=True, help="the shard's ingest table (results/ingest/shards/{shard}.parquet)")


def _add(sub, name: str, func, help_: str, examples: list[str], rules: str = "",
         note: str = "") -> argparse.ArgumentParser:
    """A subcommand with a one-line description and an Examples: epilog. Subcommands that only the
    workflow calls say which rule(s) call them."""
    word = "rules" if " or " in rules else "rule"
    description = help_ + (f" (used by the workflow {word} {rules})" if rules else "")
    epilog = (note + "\n\n" if note else "") + "Examples:\n" + "\n".join(f"  {e}" for e in examples)
    p = sub.add_parser(name, help=help_, description=description, epilog=epilog, parents=[_common_options()],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def _common_options() -> argparse.ArgumentParser:
    """-q and --debug also after the subcommand (SUPPRESS: unset there keeps the top-level value)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only warnings and errors (no progress)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error")
    return common


def _device(text: str) -> str:
    text = text.strip().lower()
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


DEVICE_HELP = ("auto (default): the GPU if PyTorch sees one, else the CPU; cpu; cuda or cuda:N: "
               "a GPU, and an error if there is none")


def _heat_shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="the shard's image stack")
    p.add_argument("--masks", required=True, help="the shard's lung masks (final model predictions)")
    p.add_argument("--table", required=True, help="the shard's ingest table")
    p.add_argument("--params", default="{}", help="JSON of heatmap parameters")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungssl", description="Label-free lung segmentation of chest X-rays.",
                                     epilog=MAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lungssl {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors (no progress)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands (lungssl COMMAND --help for each)")

    p = _add(sub, "predict", cmd_predict, "lung masks for any chest X-rays with a trained model",
             ["lungssl predict --model results/final/model.pt --input xrays/ --output masks/",
              "lungssl predict --model model.pt --input a.dcm b.png --output out/ --overlay --lr-labels",
              "find /data -name '*.dcm' > todo.txt && lungssl predict --model model.pt --input todo.txt --output out/",
              "lungssl predict --model results/final/model.pt --input xrays/ --output out/ \\",
              "    --heatmaps results/heatmaps/normal_model.npz --device cuda",
              "lungssl predict --model model.pt --input site_b/images --output out/ --truth '{root}/../masks/{stem}.png'",
              "lungssl predict --model results/final/model.pt --input site_b/ --output out/ --qc results/qc/prior.npz"],
             note="Writes OUTPUT/<stem>.png (0/255, at the input's size; a folder's tree is kept) for every\n"
                  "readable X-ray, and OUTPUT/rejected.csv (path, reason) for the files it could not read.\n"
                  "Exit codes: 0 all written; 3 some inputs rejected, the others written; 1 error, e.g. no\n"
                  "images found, every input rejected, unreadable model, GPU asked for but absent; 2 usage.")
    p.add_argument("--model", required=True, help="a model.pt written by the workflow (results/final/model.pt)")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="folders (scanned recursively for PNG, JPEG, TIFF, BMP, DICOM), image files, and/or "
                   ".txt files listing image paths one per line (relative to the current folder; # comments)")
    p.add_argument("--output", required=True, help="output folder (created)")
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png (mask outline on the image)")
    p.add_argument("--lr-labels", action="store_true",
                   help="also write <stem>_lr.png (1 = lung on the image's left, 2 = right) and left_right.csv")
    p.add_argument("--heatmaps", metavar="NORMAL_MODEL",
                   help="also write <stem>_heat.png and heatmap_scores.csv, with the normal lung model "
                   "of a workflow run (results/heatmaps/normal_model.npz)")
    p.add_argument("--qc", metavar="PRIOR",
                   help="also write quality.csv: each mask's label-free QC score (shape prior of a workflow run, "
                   "results/qc/prior.npz, x flip-TTA agreement, as the self-learning rounds score pseudo-masks), "
                   "qc_pass (score >= 0.75): the masks to check first, and qc_rank (mean percentile rank of the "
                   "shape term and the flip agreement among this call's masks): the order to check the rest in")
    p.add_argument("--truth", nargs="+", metavar="TEMPLATE",
                   help="measure against manual masks: path templates of each image's mask, as in the config "
                   "({root}: the input folder, {dir}: the image's folder, {stem}: its name without suffix; "
                   "several are united, e.g. left + right); writes truth_scores.csv (Dice, IoU, HD95, or why "
                   "an image could not be scored) and logs the mean, median, p10 and min Dice")
    p.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP)
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per batch (lower it if out of memory)")

    p = _add(sub, "synth", cmd_synth, "write the seeded synthetic radiographs with true lung masks",
             ["lungssl synth --out resources/synthetic --n 200 --seed 0"], rules="synthetic")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=_positive_int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard-fraction", type=float, default=0.2)
    p.add_argument("--min-size", type=int, default=256)
    p.add_argument("--max-size", type=int, default=512)

    p = _add(sub, "scan", cmd_scan, "list the X-ray files of the input sources and cut them into shards",
             ["lungssl scan --sources '[{\"images\": \"data/images\", \"preset\": \"images_masks\"}]' "
              "--shard-size 256 \\", "    --out results/ingest/files.parquet --info results/ingest/scan.json"],
             rules="scan")
    p.add_argument("--sources", required=True, help="JSON list of sources {images, preset, name, masks, group_regex}")
    p.add_argument("--shard-size", type=_positive_int, default=256)
    p.add_argument("--out", required=True)
    p.add_argument("--info", required=True, help="JSON with the shard list and counts")

    p = _add(sub, "decode", cmd_decode, "decode one shard: images at the working size, rejections with reasons",
             ["lungssl decode --files results/ingest/files.parquet --shard 0000 --size 256 \\",
              "    --table results/ingest/shards/0000.parquet --images results/images/0000.npy "
              "--masks results/gt/0000.npz"], rules="decode")
    p.add_argument("--files", required=True)
    p.add_argument("--shard", required=True)
    p.add_argument("--size", type=_positive_int, default=256)
    p.add_argument("--table", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--masks", required=True, help="ground-truth mask stack (only for evaluation)")

    p = _add(sub, "manifest", cmd_manifest, "merge decoded shards into the manifest with a train/val split by patient",
             ["lungssl manifest --files results/ingest/files.parquet --decoded results/ingest/shards/*.parquet \\",
              "    --out results/manifest.parquet --rejected results/manifest_rejected.parquet "
              "--summary results/ingest/summary.json"], rules="manifest")
    p.add_argument("--files", required=True)
    p.add_argument("--decoded", nargs="+", required=True)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--rejected", required=True)
    p.add_argument("--summary", required=True)

    p = _add(sub, "weak-masks", cmd_weak_masks, "classical weak lung masks for one shard",
             ["lungssl weak-masks --images results/images/0000.npy --table results/ingest/shards/0000.parquet \\",
              "    --params '{\"method\": \"pair\"}' --out results/weak/0000.npz --stats results/weak/0000.parquet"],
             rules="weak_masks")
    _shard_args(p)
    p.add_argument("--params", default="{}", help="JSON of weak-mask parameters")
    p.add_argument("--out", required=True)
    p.add_argument("--stats", required=True)

    p = _add(sub, "shape-prior", cmd_shape_prior, "the cohort's shape prior from the masks of all shards",
             ["lungssl shape-prior --masks results/weak/*.npz --films results/weak/*.parquet \\",
              "    --out results/qc/prior.npz"], rules="shape_prior")
    p.add_argument("--masks", nargs="+", required=True)
    p.add_argument("--films", nargs="+", help="the weak-mask stats tables (film boxes) of the same shards, "
                   "in the same order; without them placement is measured in the whole image")
    p.add_argument("--max-masks", type=_positive_int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--params", default="{}", help="JSON of QC parameters, saved with the prior: "
                   "`lungssl predict --qc` judges masks with them")
    p.add_argument("--film-tolerance", type=int, default=8,
                   help="the weak masks' pair_padding_tolerance, saved with the prior (film boxes at predict time)")
    p.add_argument("--out", required=True)

    p = _add(sub, "qc", cmd_qc, "QC table for one stack of masks (shape features, cohort score with --prior)",
             ["lungssl qc --masks results/weak/0000.npz --stats results/weak/0000.parquet "
              "--films results/weak/0000.parquet \\", "    --prior results/qc/prior.npz --out results/qc/0000.parquet"],
             rules="qc_weak or qc_round")
    p.add_argument("--masks", required=True)
    p.add_argument("--prior", help="cohort shape prior (from shape-prior); without it the fixed-range score")
    p.add_argument("--params", default="{}", help="JSON of QC parameters")
    p.add_argument("--stats", help="per-image stats table (parquet) with an agreement column, combined with "
                   "the shape score: weak masks' 'stability', predictions' 'tta_dice' or 'confidence'")
    p.add_argument("--agreement", help="column of --stats to use (default: the qc.agreement parameter)")
    p.add_argument("--films", help="the shard's weak-mask stats table: placement is measured in each image's "
                   "film box (as the prior's must be); without it, in the whole image")
    p.add_argument("--out", required=True)

    p = _add(sub, "qc-merge", cmd_qc_merge, "merge per-shard QC tables; summary and score histogram",
             ["lungssl qc-merge --inputs results/qc/0*.parquet --threshold 0.75 --out results/qc/weak.parquet \\",
              "    --summary results/qc/weak_summary.json --plot results/qc/weak_hist.png"], rules="qc_weak_merge")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--threshold", type=float, required=True)
    p.add_argument("--title", default="QC score")
    p.add_argument("--out", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--plot", required=True)

    p = _add(sub, "qc-combine", cmd_qc_combine,
             "one QC of the same masks from several QC tables: mean percentile rank, pass where all pass",
             ["lungssl qc-combine --tables results/qc/weak.parquet results/qc/weak_agreement.parquet \\",
              "    --out results/qc/weak_combined.parquet --summary results/qc/weak_combined_summary.json"],
             rules="weak_qc_combined")
    p.add_argument("--tables", nargs="+", required=True, help="QC tables (image_id, qc_score, qc_pass) of the same masks")
    p.add_argument("--out", required=True)
    p.add_argument("--summary", required=True)

    p = _add(sub, "mask-agreement", cmd_mask_agreement,
             "a second QC of one shard's weak masks: their Dice with the early-learning model's predictions",
             ["lungssl mask-agreement --masks results/weak/0000.npz --reference results/rounds/1/pseudo/0000.npz \\",
              "    --threshold 0.9 --out results/qc/agreement/0000.parquet"], rules="weak_agreement")
    p.add_argument("--masks", required=True, help="the masks to judge (a shard's weak masks)")
    p.add_argument("--reference", required=True, help="the model's masks for the same images")
    p.add_argument("--threshold", type=float, required=True, help="Dice at which a mask passes")
    p.add_argument("--out", required=True)

    p = _add(sub, "qc-quality", cmd_qc_quality,
             "how well each QC score knows the true Dice: Spearman, precision and recall (measuring only)",
             ["lungssl qc-quality --score 'weak masks: shape + stability' results/eval/weak.parquet "
              "results/qc/weak.parquet \\", "    --out results/eval/qc_quality.csv"], rules="qc_quality")
    p.add_argument("--score", nargs=3, action="append", required=True, metavar=("LABEL", "EVAL", "QC"),
                   help="a label, an evaluation table (true Dice) and a QC table of the same masks; repeatable")
    p.add_argument("--out", required=True)

    p = _add(sub, "evaluate", cmd_evaluate, "per-image Dice/IoU/HD95 of masks against ground truth (measuring only)",
             ["lungssl evaluate --pred results/weak/*.npz --gt results/gt/*.npz --manifest results/manifest.parquet \\",
              "    --stage weak --qc results/qc/weak.parquet --out results/eval/weak.parquet"], rules="evaluate")
    p.add_argument("--pred", nargs="+", required=True)
    p.add_argument("--gt", nargs="+", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--qc", help="QC table, so that QC-passed masks can be summarised apart")
    p.add_argument("--out", required=True)

    p = _add(sub, "eval-summary", cmd_eval_summary, "one summary row per stage and split from evaluation tables",
             ["lungssl eval-summary --inputs results/eval/*.parquet --out results/eval/summary.csv"],
             rules="eval_summary")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--out", required=True)

    p = _add(sub, "train", cmd_train, "train a UNet on target masks (early learning, a round, final or supervised)",
             ["lungssl train --manifest results/manifest.parquet --images results/images/*.npy \\",
              "    --targets results/weak/*.npz --qc results/qc/weak.parquet --params \"$(cat params.json)\" \\",
              "    --out model.pt --metrics metrics.parquet --plot curve.png --state state.pt --device cuda"],
             rules="early_learning, train_round, final_model or supervised_model",
             note="Logs one line per epoch (loss, Dice, slope of the learning curve) and, within a long\n"
                  "epoch, a progress line every LUNGSSL_PROGRESS_SECONDS (30) s. Rerun after a kill, it\n"
                  "resumes after the last finished epoch (--state).")
    p.add_argument("--manifest", required=True)
    p.add_argument("--images", nargs="+", required=True, help="image stacks, one per shard")
    p.add_argument("--targets", nargs="+", help="mask stacks holding the targets")
    p.add_argument("--qc", help="QC table: targets must pass QC, or with train.min_qc set in --params have a QC "
                   "score >= it (score = optional loss weight)")
    p.add_argument("--params", required=True, help="JSON {model: {...}, train: {...}}")
    p.add_argument("--init", help="start from this model's weights")
    p.add_argument("--stage", default="train")
    p.add_argument("--threads", type=_positive_int, default=1)
    p.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP + " (workflow: train.device)")
    p.add_argument("--chain", help="verified round chain (final stage): gives targets, QC table and init model")
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--state", required=True, help="resume state, rewritten every epoch")

    p = _add(sub, "predict-shard", cmd_predict_shard, "pseudo-masks for one shard with a trained model",
             ["lungssl predict-shard --model results/rounds/0/model.pt --images results/images/0000.npy \\",
              "    --table results/ingest/shards/0000.parquet --out pseudo.npz --stats pseudo.parquet"],
             rules="predict_round or predict_model")
    p.add_argument("--model", required=True)
    _shard_args(p)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--no-tta", action="store_true", help="skip the flip test-time augmentation")
    p.add_argument("--threads", type=_positive_int, default=1)
    p.add_argument("--device", type=_device, default="auto", help=DEVICE_HELP + " (workflow: train.device)")
    p.add_argument("--out", required=True)
    p.add_argument("--stats", required=True)

    p = _add(sub, "snap-masks", cmd_snap_masks, "move each mask's boundary onto the image's nearest edge",
             ["lungssl snap-masks --masks results/rounds/1/pseudo_raw/0000.npz --images results/images/0000.npy \\",
              "    --table results/ingest/shards/0000.parquet --snap-px 3 6 --out results/rounds/1/pseudo/0000.npz"],
             rules="snap_round")
    p.add_argument("--masks", required=True)
    _shard_args(p)
    p.add_argument("--snap-px", type=_positive_int, nargs=2, metavar=("INSIDE", "OUTSIDE"),
                   help="the band around each boundary searched for the edge (px at a 256 px side; workflow: "
                   "self_learning.snap_px); without it the masks are copied unchanged")
    p.add_argument("--weak-params", default="{}", help="JSON of weak-mask parameters (their normalisation is used)")
    p.add_argument("--out", required=True)

    p = _add(sub, "round-status", cmd_round_status, "merge a round's QC tables and decide whether the loop stops",
             ["lungssl round-status --round 1 --qc results/rounds/1/qc/*.parquet \\",
              "    --manifest results/manifest.parquet --model results/rounds/0/model.pt \\",
              "    --qc-out results/rounds/1/qc.parquet --out results/rounds/1/status.json"], rules="round_status")
    p.add_argument("--round", type=_positive_int, required=True)
    p.add_argument("--qc", nargs="+", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--model", required=True, help="the model that predicted this round")
    p.add_argument("--target-pass", type=float, default=0.66)
    p.add_argument("--min-rounds", type=int, default=1)
    p.add_argument("--max-rounds", type=int, default=5)
    p.add_argument("--qc-out", required=True)
    p.add_argument("--out", required=True)

    p = _add(sub, "round-chain", cmd_round_chain,
             "verify the self-learning rounds 1..R form one chain and record what the final model trains on",
             ["lungssl round-chain --inputs results/rounds/1/status.json results/rounds/1/qc.parquet \\",
              "    results/rounds/0/model.pt results/rounds/1/pseudo/*.npz --out results/rounds/chain.json"],
             rules="round_chain")
    p.add_argument("--inputs", nargs="+", required=True, help="status files, pseudo-masks, QC tables, models")
    p.add_argument("--out", required=True)

    p = _add(sub, "heatmap-codes", cmd_heatmap_codes,
             "one shard's lung fields on the atlas grid, for learning the normal lung appearance",
             ["lungssl heatmap-codes --images results/images/0000.npy --masks results/predictions/final/0000.npz \\",
              "    --table results/ingest/shards/0000.parquet --out codes.npz"], rules="heatmap_codes")
    _heat_shard_args(p)
    p.add_argument("--out", required=True)

    p = _add(sub, "heatmap-model", cmd_heatmap_model,
             "robust model of normal lung appearance from the cohort's atlas codes",
             ["lungssl heatmap-model --codes codes/*.npz --manifest results/manifest.parquet "
              "--out results/heatmaps/normal_model.npz"], rules="heatmap_model",
             note="By default from the images whose lung field the mask fills most completely;\n"
                  "--normal-label NORMAL learns it from the images the manifest labels NORMAL instead.")
    p.add_argument("--codes", nargs="+", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--params", default="{}", help="JSON of heatmap parameters")
    p.add_argument("--normal-label")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)

    p = _add(sub, "heatmap", cmd_heatmap, "heatmaps of suspicious opacities inside the lungs for one shard",
             ["lungssl heatmap --images results/images/0000.npy --masks results/predictions/final/0000.npz \\",
              "    --table results/ingest/shards/0000.parquet --model results/heatmaps/normal_model.npz \\",
              "    --out heat.npz --scores scores.parquet --overlays overlays/"], rules="heatmap")
    _heat_shard_args(p)
    p.add_argument("--model", required=True, help="normal lung model (from heatmap-model)")
    p.add_argument("--out", required=True, help="heatmaps, uint8 in steps of 1/32 robust SD")
    p.add_argument("--scores", required=True)
    p.add_argument("--overlays", required=True, help="folder for one overlay PNG per image")

    p = _add(sub, "heatmap-merge", cmd_heatmap_merge,
             "merge per-shard heatmap scores; ROC AUC where the manifest has image labels (measuring only)",
             ["lungssl heatmap-merge --inputs scores/*.parquet --manifest results/manifest.parquet \\",
              "    --out results/heatmaps/scores.parquet --auc results/heatmaps/auc.csv \\",
              "    --roc results/heatmaps/roc.png"],
             rules="heatmap_merge")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--positive", default="PNEUMONIA")
    p.add_argument("--negative", default="NORMAL")
    p.add_argument("--out", required=True)
    p.add_argument("--auc", required=True)
    p.add_argument("--roc", required=True)

    p = _add(sub, "report-ingest", cmd_report_ingest, "HTML table of the input: found, accepted, rejected by reason",
             ["lungssl report-ingest --summary results/ingest/summary.json --out results/ingest/summary.html"],
             rules="report_ingest")
    p.add_argument("--summary", required=True, help="results/ingest/summary.json")
    p.add_argument("--out", required=True)

    p = _add(sub, "report-eval", cmd_report_eval,
             "HTML Dice table and per-image Dice distributions per stage (measuring only)",
             ["lungssl report-eval --inputs results/eval/weak.parquet results/eval/final.parquet \\",
              "    --summary results/eval/summary.csv --table results/eval/summary.html --plot results/eval/dice.png"],
             rules="report_eval")
    p.add_argument("--inputs", nargs="+", required=True, help="per-stage evaluation tables")
    p.add_argument("--summary", required=True, help="results/eval/summary.csv")
    p.add_argument("--table", required=True)
    p.add_argument("--plot", required=True)

    p = _add(sub, "report-rounds", cmd_report_rounds,
             "QC pass fraction per self-learning round and the QC-score histograms of every stage",
             ["lungssl report-rounds --manifest results/manifest.parquet --weak-qc results/qc/weak.parquet \\",
              "    --statuses results/rounds/1/status.json --round-qc results/rounds/1/qc.parquet \\",
              "    --threshold 0.75 --target-pass 0.66 --plot pass_fraction.png --hist qc_by_round.png"],
             rules="report_rounds")
    p.add_argument("--manifest", required=True)
    p.add_argument("--weak-qc", required=True)
    p.add_argument("--statuses", nargs="+", required=True, help="rounds/<r>/status.json of rounds 1..R")
    p.add_argument("--round-qc", nargs="+", required=True, help="rounds/<r>/qc.parquet of rounds 1..R")
    p.add_argument("--threshold", type=float, required=True)
    p.add_argument("--target-pass", type=float, required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--hist", required=True)

    p = _add(sub, "report-overlays", cmd_report_overlays,
             "grids of image / weak mask / final mask (/ heatmap) for a seeded sample and the worst QC scores",
             ["lungssl report-overlays --manifest results/manifest.parquet --qc results/qc/weak.parquet \\",
              "    --images results/images/0000.npy --weak results/weak/0000.npz \\",
              "    --final results/predictions/final/0000.npz --sample sample.png --worst worst.png"],
             rules="report_overlays")
    p.add_argument("--manifest", required=True)
    p.add_argument("--qc", required=True, help="QC table of the weak masks")
    p.add_argument("--images", nargs="+", required=True, help="image stacks, one per shard")
    p.add_argument("--weak", nargs="+", required=True, help="weak mask stacks, one per shard")
    p.add_argument("--final", nargs="+", required=True, help="final model's mask stacks, one per shard")
    p.add_argument("--heat", nargs="*", default=[], help="heatmap stacks, one per shard (none: no heatmap column)")
    p.add_argument("--flag-z", type=float, default=2.0)
    p.add_argument("--rows", type=_positive_int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample", required=True)
    p.add_argument("--worst", required=True)

    p = _add(sub, "report-runtimes", cmd_report_runtimes, "runtime per rule from Snakemake's benchmark files",
             ["lungssl report-runtimes --benchmarks results/benchmarks \\",
              "    --patterns '{\"weak_masks\": \"results/benchmarks/weak_masks/{shard}.tsv\"}' \\",
              "    --table results/report/runtimes.html --plot results/report/runtimes.png"],
             rules="report_runtimes")
    p.add_argument("--benchmarks", required=True, help="folder of the benchmark files (searched recursively)")
    p.add_argument("--patterns", required=True, help="JSON {rule: benchmark path pattern with {wildcards}}")
    p.add_argument("--exclude", nargs="*", default=[], help="rules left out")
    p.add_argument("--table", required=True)
    p.add_argument("--plot", required=True)
    return parser


# ---------------------------------------------------------------- errors

def error_message(err: BaseException) -> str | None:
    """The one line a person reads for an error they can act on; None for anything else (a bug:
    its traceback is shown)."""
    torch = sys.modules.get("torch")  # not imported: no GPU was ever touched
    if torch is not None and isinstance(err, torch.cuda.OutOfMemoryError):
        return ("the GPU ran out of memory: lower the batch size (predict --batch-size; in the workflow "
                "train.batch_size, predict.batch_size) or model.size")
    if isinstance(err, MemoryError):
        return ("out of memory: lower the batch size (--batch-size; train.batch_size, predict.batch_size), "
                "ingest.shard_size or the number of parallel jobs (--cores), or ask for more memory")
    if isinstance(err, OSError):  # missing file, permission denied, disk full, ...
        return f"{err.strerror}: {err.filename}" if err.strerror and err.filename is not None else str(err)
    if isinstance(err, (ValueError, BrokenRoundChain)):
        return str(err)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: argparse prints them and exits 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("lungssl: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = error_message(err)
        if message is None or args.debug:
            raise
        print(f"lungssl: error: {' '.join(message.splitlines())}", file=sys.stderr)  # one line
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
