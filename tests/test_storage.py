import numpy as np
import pandas as pd
import pytest

from lungssl import storage


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with storage.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_mask_stack_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((3, 17, 9)) > 0.5
    storage.write_mask_stack(tmp_path / "m.npz", ["a", "b", "c"], masks)
    ids, back = storage.read_mask_stack(tmp_path / "m.npz")
    assert ids == ["a", "b", "c"] and np.array_equal(back, masks)
    assert storage.mask_stack_size(tmp_path / "m.npz") == 3


def test_empty_mask_stack_round_trip(tmp_path):
    storage.write_mask_stack(tmp_path / "m.npz", [], np.zeros((0, 8, 8), bool))
    ids, back = storage.read_mask_stack(tmp_path / "m.npz")
    assert ids == [] and back.shape == (0, 8, 8)


def test_mask_stack_checks_ids(tmp_path):
    with pytest.raises(ValueError):
        storage.write_mask_stack(tmp_path / "m.npz", ["a"], np.zeros((2, 4, 4), bool))


def test_image_stack_is_memory_mapped(tmp_path):
    imgs = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    storage.write_image_stack(tmp_path / "i.npy", imgs)
    back = storage.read_image_stack(tmp_path / "i.npy")
    assert isinstance(back, np.memmap) and np.array_equal(back, imgs)


def test_parquet_and_json(tmp_path):
    storage.write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    storage.write_json({"n": np.int64(3)}, tmp_path / "s.json")
    assert pd.read_parquet(tmp_path / "t.parquet")["a"].tolist() == [1]
    assert '"n": 3' in (tmp_path / "s.json").read_text()


def test_merge_parquet_streams_shards_into_one_table(tmp_path):
    a = pd.DataFrame({"image_id": ["a", "b"], "qc_score": [0.9, 0.2], "note": [None, None], "f": [1.0, 2.0]})
    b = pd.DataFrame({"image_id": ["c"], "qc_score": [0.5], "note": ["x"], "f": [3.0]})
    storage.write_parquet(a, tmp_path / "0000.parquet")
    storage.write_parquet(b, tmp_path / "0001.parquet")
    kept = storage.merge_parquet([tmp_path / "0000.parquet", tmp_path / "0001.parquet"], tmp_path / "all.parquet",
                                 keep=["image_id", "qc_score"])
    merged = pd.read_parquet(tmp_path / "all.parquet")
    # a shard whose column is all missing (stored as null) merges with a shard that has values
    storage.write_parquet(pd.concat([a, b], ignore_index=True), tmp_path / "concat.parquet")
    pd.testing.assert_frame_equal(merged, pd.read_parquet(tmp_path / "concat.parquet"))
    assert list(kept.columns) == ["image_id", "qc_score"] and kept["image_id"].tolist() == ["a", "b", "c"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_csv_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "t.csv"
    storage.write_csv(pd.DataFrame({"a": [1.23456]}), target, float_format="%.2f")
    assert target.read_text() == "a\n1.23\n"

    class Broken(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            super().to_csv(*args, **kwargs)
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        storage.write_csv(Broken({"a": [9]}), target)
    assert target.read_text() == "a\n1.23\n"  # the old table, not the half-written new one
    assert [p.name for p in target.parent.iterdir()] == ["t.csv"]  # no temp left behind
