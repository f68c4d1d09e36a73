"""Inference: a trained model turns images into lung probabilities and masks.

Used by the self-learning rounds (one shard stack at a time) and by `lungssl predict` (any folder).
Flip test-time augmentation averages the prediction of the image and its mirror; the agreement
between the two is a label-free confidence signal.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
import torch

from lungssl.modeling import ModelSpec, normalise
from lungssl.storage import write_csv, write_png

log = logging.getLogger("lungssl.inference")


def _batch_tensor(images: np.ndarray, spec: ModelSpec, device: torch.device) -> torch.Tensor:
    size = spec.size
    resized = [cv2.resize(np.asarray(im), (size, size), interpolation=cv2.INTER_AREA) if im.shape[0] != size
               else np.asarray(im) for im in images]
    x = torch.from_numpy(np.stack([normalise(im, spec.input_norm) for im in resized]))[:, None]
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, images: np.ndarray, spec: ModelSpec, device: torch.device,
                  batch_size: int = 32, tta: bool = True, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(N x H x W uint8) -> (probabilities N x size x size float32 at the model's input size, TTA
    agreement Dice per image). spec: the model's, which says how its input is sized and normalised.

    progress: a lungssl.progress.Progress told of every finished batch, or None."""
    model.eval()
    probs, agree = [], []
    amp = device.type == "cuda"
    for start in range(0, len(images), batch_size):
        x = _batch_tensor(images[start:start + batch_size], spec, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            p = torch.sigmoid(model(x).float())
            if tta:
                p_flip = torch.sigmoid(model(torch.flip(x, dims=[3])).float()).flip(dims=[3])
                agree.append(_dice_batch(p > 0.5, p_flip > 0.5))
                p = (p + p_flip) / 2
            else:
                agree.append(torch.full((len(x),), float("nan"), device=device))
        probs.append(p[:, 0].float().cpu().numpy())
        if progress is not None:
            progress.update(len(x))
    if not probs:
        return np.zeros((0, spec.size, spec.size), np.float32), np.zeros(0, np.float32)
    return np.concatenate(probs), torch.cat(agree).cpu().numpy()


def _dice_batch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).float(), b.flatten(1).float()
    total = a.sum(1) + b.sum(1)
    return torch.where(total > 0, 2 * (a * b).sum(1) / total.clamp(min=1), torch.ones_like(total))


def to_mask(prob: np.ndarray, height: int, width: int, threshold: float = 0.5) -> np.ndarray:
    """Probability map at the model size -> bool mask at (height, width)."""
    if prob.shape != (height, width):
        prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
    return prob >= threshold


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Keep the two largest objects and fill holes: the lungs, without specks."""
    from scipy import ndimage as ndi

    from lungssl.weak_masks import keep_largest_objects

    return ndi.binary_fill_holes(keep_largest_objects(mask, 2, 0.005))


def lung_mask(prob: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The mask every prediction path writes: the probability map thresholded at the image's size,
    kept inside the image's film box, then cleaned; one recipe, so the workflow, `lungssl predict`
    and the benchmarks agree."""
    from lungssl.weak_masks import find_film

    mask = to_mask(prob, *image.shape[:2])
    # Uniform padding round a scanned film holds no anatomy, yet a model that has seen few padded
    # films (a cohort of unpadded pediatric films added, say) can take its black for lung air and
    # grow a lung into it. The box comes from the weak masks' film finder at its default tolerance,
    # as the rank normalisation's does; with no padding found it is the whole image.
    top, bottom, left, right = find_film(image)
    inside = np.zeros_like(mask)
    inside[top:bottom, left:right] = True
    return clean_mask(mask & inside)


def draw_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Gray image with the mask outline in green, for a person to check at a glance."""
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (0, 220, 0), max(1, image.shape[0] // 256))
    return rgb


def left_right_labels(mask: np.ndarray) -> tuple[np.ndarray, str]:
    """Label image (0 background, 1 lung on the image's left, 2 on its right) and a plausibility
    verdict: "" when the pair looks like two lungs, else the reason it does not."""
    from lungssl.qc import split_lungs

    _, left, right = split_lungs(mask)
    labels = left.astype(np.uint8) + 2 * right.astype(np.uint8)
    a, b = int(left.sum()), int(right.sum())
    if not a or not b:
        return labels, "only one lung found"
    if max(a, b) > 3 * min(a, b):  # lungs differ in size, but not threefold
        return labels, f"lung areas differ {max(a, b) / min(a, b):.1f}-fold"
    return labels, ""


def _output_stem(path, roots, out_dir, used: set):
    """Where the outputs for input `path` go: its place under the input folder it came from,
    always inside out_dir. Names come from the data, so neither a file named "..png" (stem ".")
    nor an input given as "in/../x.png" may put an output, let alone overwrite an input, elsewhere."""
    import os
    from pathlib import Path

    path = Path(os.path.normpath(path))
    root = _root_of(path, roots)
    parent = path.relative_to(root).parent if root else Path()  # normalised first: no ".." left in it
    name = path.stem if path.stem not in ("", ".", "..") else path.name
    stem = out_dir / parent / name
    if stem in used:  # a.png next to a.jpg: keep both
        stem = stem.with_name(f"{stem.name}.{path.suffix.lstrip('.')}")
    base, k = stem, 1
    while stem in used:  # p1/image.dcm and p2/image.dcm given as files or in a list: keep all
        k += 1
        stem = base.with_name(f"{base.name}.{k}")
    if not Path(os.path.normpath(stem)).is_relative_to(os.path.normpath(out_dir)) or stem.name in (".", ".."):
        raise ValueError(f"refusing to write outside {out_dir} for input {path}")
    used.add(stem)
    return stem


def _root_of(path, roots):
    """The input folder (or a list's common folder) that `path` came from, None for a file given alone."""
    import os
    from pathlib import Path

    path = Path(os.path.normpath(path))
    for root in roots:
        root = Path(os.path.normpath(root))
        if root.is_dir() and path.is_relative_to(root):
            return root
    return None


LIST_SUFFIX = ".txt"


def expand_inputs(inputs) -> tuple[list, list]:
    """Folders (scanned recursively), text files listing paths (one per line) and image files ->
    (the image files, the roots whose folder tree the outputs keep).

    A list's lines are paths as you would type them here (relative ones from the current folder);
    blank lines and lines starting with # are skipped; its files keep their folders below the
    folder they share. An input that does not exist is an error; a listed file that does not is
    rejected later like any unreadable file."""
    import os
    from pathlib import Path

    from lungssl.ingest import find_files

    files, roots = [], []
    for p in map(Path, inputs):
        check_exists(p)
        if p.is_dir():
            found = find_files(p)
            if not found and len(inputs) > 1:  # alone, it is the error below
                log.warning("no X-ray images in %s", p)
            files += found
            roots.append(p)
        elif p.suffix.lower() == LIST_SUFFIX:
            listed = [Path(os.path.abspath(line.strip())) for line in p.read_text(errors="replace").splitlines()
                      if line.strip() and not line.lstrip().startswith("#")]
            if listed:
                roots.append(Path(os.path.commonpath([f.parent for f in listed])))
            elif len(inputs) > 1:
                log.warning("no paths listed in %s", p)
            files += listed
        else:
            files.append(p)
    return files, roots


def check_exists(path) -> None:
    """A path given on the command line must exist (a listed or found file may still be unreadable)."""
    from pathlib import Path

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"input not found: {path} (no such folder or file)")


def predict_folder(model_path, inputs, out_dir, overlay: bool = False, device: str = "auto",
                   batch_size: int = 16, progress: bool | None = None, lr_labels: bool = False,
                   heat_model=None, truth=None, qc_prior=None) -> tuple[int, list[tuple[str, str]]]:
    """Masks (0/255 PNG, each at its input's size) for folders, lists of paths and files; returns
    (written, rejected). See expand_inputs for the inputs.

    With lr_labels, also <stem>_lr.png (0/1/2 = background / image-left / image-right lung) and
    left_right.csv saying for each image whether the pair is plausible. With heat_model (a normal
    lung model from the workflow's heatmap stage), also <stem>_heat.png and heatmap_scores.csv.
    With truth (mask path templates, as in the config: {root}, {dir}, {stem}), also truth_scores.csv:
    each mask's Dice, IoU and HD95 against the manual one, or why it could not be scored.
    With qc_prior (a workflow run's shape prior, results/qc/prior.npz), also quality.csv: each mask's
    label-free QC score, judged as the self-learning rounds judge pseudo-masks, and whether it passes.
    progress: None = a bar on a terminal, a log line every 30 s elsewhere; False = neither."""
    import pandas as pd

    from lungssl.loader import ImageReadError, read_image
    from lungssl.modeling import load_model, pick_device
    from lungssl.progress import Progress

    dev = pick_device(device)
    for p in inputs:  # a typo in a path fails before the model is even read
        check_exists(p)
    scorer = _TruthScorer(truth) if truth else None  # and so does a mistyped mask template
    quality = _QualityScorer(qc_prior) if qc_prior else None  # and a wrong prior file
    model, spec, _ = load_model(model_path, dev)
    heat = _HeatWriter(heat_model) if heat_model else None
    files, roots = expand_inputs(inputs)
    if not files:
        raise ValueError(f"no X-ray images found in {', '.join(map(str, inputs))} "
                         "(looked for PNG, JPEG, TIFF, BMP and DICOM files, in subfolders too)")
    rejected, used, written, lr_rows = [], set(), 0, []
    bar = Progress(len(files) if progress is not False else 0, "predict", terminal=progress)
    for start in range(0, len(files), batch_size):
        batch = []
        for path in files[start:start + batch_size]:
            try:
                batch.append((path, read_image(path).pixels))
            except ImageReadError as err:
                rejected.append((str(path), str(err)))
        if batch:
            probs, tta = predict_probs(model, [px for _, px in batch], spec, dev, batch_size)
            for (path, px), prob, agreement in zip(batch, probs, tta):
                mask = lung_mask(prob, px)
                stem = _output_stem(path, roots, out_dir, used)
                write_png(stem.with_name(stem.name + ".png"), mask.astype(np.uint8) * 255)
                if overlay:
                    write_png(stem.with_name(stem.name + "_overlay.png"), draw_overlay(px, mask))
                if lr_labels:
                    labels, problem = left_right_labels(mask)
                    write_png(stem.with_name(stem.name + "_lr.png"), labels)
                    lr_rows.append((str(path), problem == "", problem))
                if heat:
                    heat(path, stem, px, mask)
                if scorer:
                    scorer(path, _root_of(path, roots), mask)
                if quality:
                    quality(path, px, mask, agreement, spec.size)
                written += 1
        bar.update(len(files[start:start + batch_size]))
    bar.close()
    if lr_rows:
        write_csv(pd.DataFrame(lr_rows, columns=["path", "plausible", "problem"]), out_dir / "left_right.csv")
    if heat:
        write_csv(heat.table(), out_dir / "heatmap_scores.csv")
    if scorer:
        scorer.write(out_dir / "truth_scores.csv")
    if quality:
        quality.write(out_dir / "quality.csv")
    if rejected:
        write_csv(pd.DataFrame(rejected, columns=["path", "reason"]), out_dir / "rejected.csv")
    return written, rejected


class _HeatWriter:
    """Writes <stem>_heat.png per image and collects its scores (for predict_folder)."""

    def __init__(self, model_path):
        from lungssl.heatmaps import NormalModel

        self.model = NormalModel.load(model_path)
        self.params, self.rows = self.model.params, []

    def __call__(self, path, stem, image: np.ndarray, mask: np.ndarray) -> None:
        from lungssl.heatmaps import draw_heat_overlay, heatmap_any_size

        z, scores = heatmap_any_size(image, mask, self.model, self.params)
        write_png(stem.with_name(stem.name + "_heat.png"), draw_heat_overlay(image, z, self.params.flag_z))
        self.rows.append({"path": str(path), **scores})

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


class _QualityScorer:
    """Label-free QC of each predicted mask (for predict_folder): the score the self-learning rounds
    give a pseudo-mask (IoU with the run's cohort shape prior x the z-gate on placement and size,
    combined with the flip-TTA Dice), so a user sees which masks of a new hospital to check.
    On a hospital the model never saw, 99% of the masks it passes have Dice >= 0.85, and qc_rank
    orders them by true Dice with Spearman 0.66-0.70 (README, "A hospital the pipeline never saw")."""

    WORDS = {"area_fraction": "lung area", "bbox_height": "lung height", "bbox_width": "lung width",
             "bbox_cx": "horizontal position", "bbox_cy": "vertical position",
             "height_ratio": "left/right height balance", "area_ratio": "left/right area balance"}
    COLUMNS = ["path", "qc_score", "qc_pass", "q_shape", "q_prior", "f_max_abs_z", "f_stability", "why"]
    # write() adds qc_rank: the mean percentile rank of q_shape and f_stability among the masks of
    # one call (low first when checking).

    def __init__(self, prior_path):
        from lungssl.qc import QCParams, load_prior

        check_exists(prior_path)
        try:
            self.prior = load_prior(prior_path)
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{prior_path} is not the shape prior of a lungssl run "
                             f"(results/qc/prior.npz): {err}") from None
        # Judged as the run judged its own masks (priors older than that record: the defaults).
        self.params = QCParams.from_config(self.prior.judging.get("qc", {}))
        self.film_tolerance, self.rows = int(self.prior.judging.get("film_tolerance", 8)), []

    def __call__(self, path, image: np.ndarray, mask: np.ndarray, agreement: float, size: int) -> None:
        from lungssl.qc import qc_table
        from lungssl.weak_masks import film_fractions

        # The prior was built on square working-size masks; its features are fractions of the film,
        # so the square resize changes nothing but the cost.
        small = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
        row = qc_table([str(path)], small[None], self.params, self.prior, agreement=[float(agreement)],
                       films=[film_fractions(image, self.film_tolerance)]).iloc[0]
        self.rows.append({"path": str(path), **{c: row[c] for c in self.COLUMNS[1:-1]}, "why": self._why(row)})

    def _why(self, row) -> str:
        """Which part of the score fails, in words ("" for a mask that passes)."""
        if row["qc_pass"]:
            return ""
        level, reasons = self.params.cohort_threshold, []
        if row["f_max_abs_z"] > self.params.z_soft:
            from lungssl.qc import GEOMETRY, worst_z

            worst, z = worst_z(self.prior, {k: row[f"f_{k}"] for k in GEOMETRY})
            reasons.append(f"{self.WORDS.get(worst, worst)} {z:+.1f} robust SDs from the cohort's")
        if row["q_prior"] < level:
            reasons.append(f"shape unlike the cohort's lungs (IoU with its typical pair {row['q_prior']:.2f})")
        if row["f_stability"] < level:
            reasons.append(f"the mirrored image gives another mask (flip Dice {row['f_stability']:.2f})")
        return "; ".join(reasons) or "the parts pass, their product does not"

    def write(self, path) -> None:
        import pandas as pd

        from lungssl.qc import rank_mean

        table = pd.DataFrame(self.rows, columns=self.COLUMNS)
        # Shape and flip agreement ranked together order a new hospital's masks by true Dice better
        # than the pass score's geometric mean does (README, "A hospital the pipeline never saw").
        table.insert(3, "qc_rank", rank_mean(table["q_shape"], table["f_stability"]))
        write_csv(table, path)
        failed = int((~table["qc_pass"].astype(bool)).sum())
        log.info("QC passed %d of %d masks (score >= %.2f); %s lists the %d to check first (qc_pass False)",
                 len(table) - failed, len(table), self.params.cohort_threshold, path, failed)


class _TruthScorer:
    """Scores each predicted mask against a manual one (for predict_folder; measuring only).

    A missing, unreadable or differently sized manual mask is recorded with its reason, never
    skipped silently, and never resized: a mask of another size may belong to another image."""

    def __init__(self, templates):
        for t in templates:
            try:
                filled = t.format(root="R", dir="D", stem="\0")
            except (KeyError, IndexError) as err:  # {name} or a positional {} / {0}
                field = f"{{{err.args[0]}}}" if isinstance(err, KeyError) else "a positional {}"
                raise ValueError(f"mask template {t!r}: {field} is not a placeholder; "
                                 "use {root}, {dir} and {stem}") from None
            except ValueError as err:
                raise ValueError(f"mask template {t!r} is not a valid template: {err}") from None
            if "\0" not in filled:  # one file for every image is a mistake, not a measurement
                raise ValueError(f"mask template {t!r} must contain {{stem}} (the image's name without suffix)")
        self.templates, self.rows = list(templates), []

    def __call__(self, path, root, mask: np.ndarray) -> None:
        from pathlib import Path

        from lungssl.evaluation import dice, hd95, iou
        from lungssl.ingest import mask_paths
        from lungssl.loader import ImageReadError, read_mask

        path = Path(path)
        files = mask_paths(path, Path(root) if root else path.parent, self.templates)
        row = {"path": str(path), "truth": ";".join(files), "dice": np.nan, "iou": np.nan, "hd95": np.nan,
               "problem": ""}
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            row["problem"] = f"no manual mask {missing[0]}"
        else:
            try:
                manual = read_mask([Path(f) for f in files])
            except (ImageReadError, ValueError) as err:
                manual, row["problem"] = None, f"unreadable manual mask: {err}"
            if manual is not None and manual.shape != mask.shape:
                row["problem"] = (f"manual mask is {manual.shape[1]}x{manual.shape[0]}, "
                                  f"the image {mask.shape[1]}x{mask.shape[0]}")
            elif manual is not None:
                row.update(dice=dice(mask, manual), iou=iou(mask, manual), hd95=hd95(mask, manual))
        self.rows.append(row)

    def write(self, path) -> None:
        import pandas as pd

        from lungssl.evaluation import summary_row

        table = pd.DataFrame(self.rows, columns=["path", "truth", "dice", "iou", "hd95", "problem"])
        write_csv(table, path)
        scored = table[table["problem"] == ""]
        if len(scored):
            s = summary_row(scored, "predict")
            log.info("Dice against the manual masks of %d images: mean %.4f, median %.4f, p10 %.4f, min %.4f",
                     s["n"], s["dice_mean"], s["dice_median"], s["dice_p10"], s["dice_min"])
        if len(scored) < len(table):
            log.warning("%d of %d images could not be scored against a manual mask; %s says why",
                        len(table) - len(scored), len(table), path)
