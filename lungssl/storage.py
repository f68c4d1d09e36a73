"""Atomic file writes and the on-disk formats shared by every stage.

Every output goes to a temporary sibling first and is renamed into place, so a killed job
never leaves a file that looks complete (rename is atomic on POSIX within one folder). What a
killed job leaves is a hidden `.<name>.*.tmp` sibling, removed when the file is next written.
"""
from __future__ import annotations

import glob
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pandas as pd


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _remove_stale_temps(path: Path) -> None:
    """Temp files of earlier writers of `path` that were killed (one job owns each output)."""
    # mkstemp's random part is 8 characters: the pattern matches this file's temps, no other file's.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}.tmp"):
        stale.unlink(missing_ok=True)


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_parquet(df: pd.DataFrame, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(df: pd.DataFrame, path: Path | str, float_format: str | None = None) -> None:
    """The table as CSV (no index), renamed into place: a reader never sees half a table."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format)


def merge_parquet(inputs: list[Path | str], path: Path | str, keep: list[str]) -> pd.DataFrame:
    """Concatenate per-shard tables into one parquet file, one shard in memory at a time, and return
    only the columns `keep` of all rows: a merge job's memory stays set by the shard size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # A shard where a column is all missing stores it as null: promote to the other shards' type.
    schema = pa.unify_schemas([pq.read_schema(p).remove_metadata() for p in inputs], promote_options="permissive")
    kept = []
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for p in inputs:
                part = pq.read_table(p).replace_schema_metadata(None)
                for name in schema.names:
                    if name not in part.column_names:
                        part = part.append_column(name, pa.nulls(len(part), schema.field(name).type))
                part = part.select(schema.names).cast(schema)
                writer.write_table(part)
                kept.append(part.select(keep).to_pandas())
    return pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=keep)


def write_json(obj: Any, path: Path | str) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_png(path: Path | str, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    write_bytes(path, buf.tobytes())


def write_image_stack(path: Path | str, images: np.ndarray) -> None:
    """A shard's images as one uint8 N x H x W .npy: memory-mappable, so readers stay bounded."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(images, dtype=np.uint8))


def read_image_stack(path: Path | str, mmap: bool = True) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None)


def write_npz(path: Path | str, **arrays: np.ndarray) -> None:
    """Named arrays in one compressed .npz, written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def write_mask_stack(path: Path | str, ids: list[str], masks: np.ndarray) -> None:
    """Binary masks (N x H x W) bit-packed and compressed with their image ids, one file per shard."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or len(ids) != masks.shape[0]:
        raise ValueError(f"mask stack shape {masks.shape} does not match {len(ids)} ids")
    write_npz(path, ids=np.asarray(ids, dtype=str), shape=np.asarray(masks.shape),
              bits=np.packbits(masks, axis=None))


def read_mask_stack(path: Path | str) -> tuple[list[str], np.ndarray]:
    with np.load(path) as data:
        shape = tuple(int(s) for s in data["shape"])
        count = int(np.prod(shape))
        masks = np.unpackbits(data["bits"], count=count).reshape(shape).astype(bool)
        return [str(i) for i in data["ids"]], masks


def write_heat_stack(path: Path | str, ids: list[str], heats: list[np.ndarray], side: int) -> None:
    """Quantised heatmaps (uint8, see heatmaps.quantise) of one shard with their image ids."""
    write_npz(path, ids=np.asarray(ids, dtype=str),
              heat=np.stack(heats) if heats else np.zeros((0, side, side), np.uint8))


def read_heat_stack(path: Path | str) -> tuple[list[str], np.ndarray]:
    with np.load(path) as data:
        return [str(i) for i in data["ids"]], data["heat"]


def mask_stack_size(path: Path | str) -> int:
    """Number of masks in a stack, read from its header only (no unpacking)."""
    with np.load(path) as data:
        return int(data["shape"][0])
