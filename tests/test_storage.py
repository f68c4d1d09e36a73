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
