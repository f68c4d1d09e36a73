"""Ingest: find the X-rays, decode each shard once, and build the manifest.

Three steps, each one workflow job type:
  scan_sources   -> the list of files found, cut into shards (cheap: no decoding)
  decode_shard   -> per shard: accepted images resized to the working size + rejections with reasons
  build_manifest -> accepted images with a seeded train/val split by patient, and the rejected table
Found = accepted + rejected always holds: nothing is dropped silently.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import pandas as pd
from lungssl.loader import ImageReadError, file_digest, is_supported, read_image, read_mask
from lungssl.presets import get_preset
from lungssl.progress import Progress

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
log = logging.getLogger("lungssl.ingest")


@dataclass(frozen=True)
class Source:
    images: Path
    preset: str = "generic"
    name: str = ""
    masks: tuple[str, ...] | None = None  # None: the preset's templates
    group_regex: str | None = None  # None: the preset's regex; "": one group per image

    @classmethod
    def from_config(cls, cfg: dict) -> "Source":
        masks = cfg.get("masks")
        return cls(images=Path(cfg["images"]), preset=cfg.get("preset", "generic"), name=cfg.get("name", ""),
                   masks=tuple(masks) if masks is not None else None, group_regex=cfg.get("group_regex"))

    def mask_templates(self) -> tuple[str, ...]:
        return self.masks if self.masks is not None else get_preset(self.preset).masks

    def group_pattern(self) -> re.Pattern | None:
        regex = self.group_regex if self.group_regex is not None else get_preset(self.preset).group_regex
        return re.compile(regex) if regex else None


# ---------------------------------------------------------------- scan

def find_files(root: Path) -> list[Path]:
    """Supported files under root, sorted so that ids and shards are the same on every run.

    Symlinked files are read like any file (a broken one is found, then rejected). Symlinked
    folders are not followed (cycles, whole trees outside the input folder); each one skipped
    is logged, and so is the number of files of other types, so nothing vanishes unmentioned."""
    if not root.is_dir():
        raise FileNotFoundError(f"input folder does not exist: {root}")
    found, folder_links, ignored = [], [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        folder_links += [os.path.join(dirpath, d) for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            path = Path(dirpath) / name
            if is_supported(path):
                found.append(path)
            else:
                ignored += 1
    if folder_links:
        log.warning("not following %d symlinked folder(s) under %s: %s", len(folder_links), root,
                    ", ".join(sorted(folder_links)[:20]))
    if ignored:
        log.info("ignored %d file(s) of other types under %s (not PNG, JPEG, TIFF, BMP or DICOM)", ignored, root)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def image_id(rel: str, prefix: str = "") -> str:
    """A filesystem-safe id from the relative path; a hash suffix keeps it unique when sanitised."""
    base = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
    safe = _UNSAFE.sub("_", base.replace("/", "__"))
    if safe.startswith("."):  # "..png" would give the id ".", "._a.png" a hidden name
        safe = "_" + safe
    if safe != base.replace("/", "__"):
        safe += "-" + hashlib.sha1(rel.encode()).hexdigest()[:8]
    return f"{prefix}__{safe}" if prefix else safe


def group_of(rel: str, image: str, pattern: re.Pattern | None) -> str:
    match = pattern.search(rel) if pattern else None
    if not match:
        return image
    return match.group(1) if match.groups() else match.group(0)


def mask_paths(path: Path, root: Path, templates: Sequence[str]) -> list[str]:
    return [os.path.normpath(t.format(root=root, dir=path.parent, stem=path.stem)) for t in templates]


def scan_source(source: Source) -> pd.DataFrame:
    root = source.images
    pattern = source.group_pattern()
    templates = source.mask_templates()
    preset = get_preset(source.preset)
    rows = []
    for path in find_files(root):
        rel = path.relative_to(root).as_posix()
        iid = image_id(rel, source.name)
        masks = mask_paths(path, root, templates)
        rows.append({
            "image_id": iid, "source": source.name, "path": str(path), "rel_path": rel,
            "group": (f"{source.name}__" if source.name else "") + group_of(rel, iid, pattern),
            "label": path.parent.name if preset.label_from_parent else None,
            # A mask is used only when every template file exists (e.g. both left and right).
            "mask_paths": masks if masks and all(Path(m).is_file() for m in masks) else [],
        })
    return pd.DataFrame(rows, columns=["image_id", "source", "path", "rel_path", "group", "label", "mask_paths"])


def scan_sources(sources: Iterable[Source], shard_size: int) -> pd.DataFrame:
    frames = [scan_source(s) for s in sources]
    files = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if files.empty:
        roots = ", ".join(str(s.images) for s in sources)
        raise ValueError(f"no X-ray images found in {roots} (looked for PNG, JPEG, TIFF, BMP, DICOM)")
    _dedupe_ids(files)
    files["shard"] = [shard_name(i // shard_size) for i in range(len(files))]
    return files


def _dedupe_ids(files: pd.DataFrame) -> None:
    """a.png and a.jpg in one folder share a stem: keep both, made distinct by their suffix."""
    dup = files["image_id"].duplicated(keep=False)
    files.loc[dup, "image_id"] = [
        f"{iid}-{Path(rel).suffix.lstrip('.').lower()}" for iid, rel in zip(files.loc[dup, "image_id"],
                                                                             files.loc[dup, "rel_path"])
    ]
    if files["image_id"].duplicated().any():
        raise ValueError("could not make image ids unique: " + ", ".join(files.loc[files.image_id.duplicated(), "rel_path"]))


def shard_name(index: int) -> str:
    return f"{index:04d}"


def shard_names(files: pd.DataFrame) -> list[str]:
    return sorted(files["shard"].unique())


# ---------------------------------------------------------------- decode

def resize_image(pixels: np.ndarray, size: int) -> np.ndarray:
    # INTER_AREA averages when shrinking, so thin structures do not alias.
    return cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) >= 0.5


def _decode_mask(paths: list[str], shape: tuple[int, int], size: int) -> tuple[np.ndarray | None, str]:
    if not paths:
        return None, ""
    try:
        mask = read_mask([Path(p) for p in paths])
    except ImageReadError as err:
        return None, f"mask unreadable: {err}"
    if mask.shape != shape:
        return None, f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image {shape[1]}x{shape[0]}"
    return resize_mask(mask, size), ""


def decode_shard(files: pd.DataFrame, size: int, progress: bool = True
                 ) -> tuple[pd.DataFrame, np.ndarray, list[str], np.ndarray]:
    """Decode one shard: (table of every file, accepted image stack, ids with masks, mask stack)."""
    rows, images, mask_ids, masks = [], [], [], []
    bar = Progress(len(files) if progress else 0, "decode", unit="files")
    for rec in files.itertuples(index=False):
        row = {"image_id": rec.image_id, "accepted": False, "reason": "", "width": 0, "height": 0,
               "bit_depth": 0, "format": "", "sha256": "", "has_mask": False, "mask_reason": ""}
        try:
            img = read_image(Path(rec.path))  # first: it refuses pipes and devices, which would block a digest
            row["sha256"] = file_digest(Path(rec.path))
        except ImageReadError as err:
            row["reason"] = str(err)
        except OSError as err:
            row["reason"] = f"unreadable file: {err.strerror or err}"
        else:
            h, w = img.pixels.shape
            row.update(accepted=True, width=w, height=h, bit_depth=img.bit_depth, format=img.fmt, row=len(images))
            images.append(resize_image(img.pixels, size))
            mask, row["mask_reason"] = _decode_mask(list(rec.mask_paths), (h, w), size)
            if mask is not None:
                row["has_mask"] = True
                mask_ids.append(rec.image_id)
                masks.append(mask)
        rows.append(row)
        bar.update()
    bar.close()
    table = pd.DataFrame(rows)
    # "row" is only set for accepted files: a shard where every file is rejected has no such column.
    table["row"] = (table["row"] if "row" in table else pd.Series(-1, index=table.index)).fillna(-1).astype(int)
    stack = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    mstack = np.stack(masks) if masks else np.zeros((0, size, size), bool)
    return table, stack, mask_ids, mstack


# ---------------------------------------------------------------- manifest

def assign_split(groups: Sequence[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Seeded split by patient: all images of a group land on the same side."""
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = int(round(val_fraction * len(unique)))
    if val_fraction > 0 and len(unique) > 1:
        n_val = min(max(n_val, 1), len(unique) - 1)  # both sides non-empty whenever possible
    val = {unique[i] for i in order[:n_val]}
    return {g: ("val" if g in val else "train") for g in unique}


def split_note(split: dict[str, str]) -> str:
    """What a user should know about the split ("" when both sides have patients)."""
    sides = set(split.values())
    if len(split) == 1:
        return ("only one patient group: every image is in the training split and there is no validation "
                "split (validation metrics are NaN); set input.group_regex if the images are of several patients")
    if "val" not in sides:
        return "no validation split (ingest.val_fraction is 0): validation metrics are NaN"
    return ""


def mask_problems(manifest: pd.DataFrame) -> dict[str, int]:
    """Ground-truth masks that exist but were set aside (wrong size, unreadable), by reason."""
    reasons = manifest.loc[manifest["mask_reason"].fillna("") != "", "mask_reason"]
    return {str(k): int(v) for k, v in reasons.value_counts().items()}


def build_manifest(files: pd.DataFrame, decoded: pd.DataFrame, val_fraction: float, seed: int
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    merged = files.drop(columns=["mask_paths"]).assign(
        mask_path=[";".join(m) for m in files["mask_paths"]]).merge(decoded, on="image_id", how="left",
                                                                    validate="one_to_one")
    missing = merged["accepted"].isna()
    if missing.any():
        raise ValueError(f"{int(missing.sum())} scanned files have no decode record (stale shard outputs?)")
    accepted = merged[merged["accepted"].astype(bool)].drop(columns=["accepted", "reason"])
    rejected = merged[~merged["accepted"].astype(bool)][["image_id", "source", "path", "rel_path", "reason"]]
    split = assign_split(accepted["group"].tolist(), val_fraction, seed)
    accepted = accepted.assign(split=accepted["group"].map(split))
    return accepted.reset_index(drop=True), rejected.reset_index(drop=True)
