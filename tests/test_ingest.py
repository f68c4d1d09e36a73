from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungssl import ingest
from lungssl.ingest import Source
from tests.conftest import toy_radiograph, write_png


def _write_case(path: Path, size: int = 128, seed: int = 0) -> np.ndarray:
    img, mask = toy_radiograph(size, seed)
    write_png(path, img)
    return mask


def test_image_id_is_stable_unique_and_safe():
    assert ingest.image_id("train/NORMAL/a.jpeg") == "train__NORMAL__a"
    odd = ingest.image_id("größe bild/1 a.png")
    assert odd.isascii() and " " not in odd
    assert odd != ingest.image_id("grosse bild/1 a.png") and odd == ingest.image_id("größe bild/1 a.png")
    assert ingest.image_id("x/a.png", prefix="src") == "src__x__a"


def test_same_stem_in_two_folders_and_two_suffixes(tmp_path):
    for rel in ("a/x.png", "b/x.png", "b/y.png", "b/y.jpg"):
        _write_case(tmp_path / rel)
    files = ingest.scan_sources([Source(tmp_path)], shard_size=256)
    assert files["image_id"].is_unique and len(files) == 4


def test_scan_rejects_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest.scan_sources([Source(tmp_path / "nope")], 10)
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no X-ray images found"):
        ingest.scan_sources([Source(tmp_path)], 10)


def test_shards_are_cut_by_shard_size(tmp_path):
    for i in range(7):
        _write_case(tmp_path / f"{i}.png", 64, i)
    files = ingest.scan_sources([Source(tmp_path)], shard_size=3)
    assert ingest.shard_names(files) == ["0000", "0001", "0002"]
    assert files.groupby("shard").size().tolist() == [3, 3, 1]


def test_images_masks_preset(tmp_path):
    _write_case(tmp_path / "images" / "a.png")
    write_png(tmp_path / "masks" / "a.png", np.zeros((128, 128), np.uint8))
    _write_case(tmp_path / "images" / "b.png")  # no mask: still an image, just not evaluated
    files = ingest.scan_sources([Source(tmp_path / "images", preset="images_masks")], 10)
    assert [len(m) for m in files["mask_paths"]] == [1, 0]


def test_montgomery_preset_unites_left_and_right(tmp_path):
    root = tmp_path / "CXR_png"
    _write_case(root / "MCUCXR_0001_0.png")
    for side in ("leftMask", "rightMask"):
        write_png(tmp_path / "ManualMask" / side / "MCUCXR_0001_0.png", np.zeros((128, 128), np.uint8))
    files = ingest.scan_sources([Source(root, preset="montgomery")], 10)
    assert len(files.loc[0, "mask_paths"]) == 2


def test_shenzhen_preset(tmp_path):
    _write_case(tmp_path / "CXR_png" / "CHNCXR_0001_0.png")
    write_png(tmp_path / "mask" / "CHNCXR_0001_0_mask.png", np.zeros((128, 128), np.uint8))
    files = ingest.scan_sources([Source(tmp_path / "CXR_png", preset="shenzhen")], 10)
    assert files.loc[0, "mask_paths"][0].endswith("CHNCXR_0001_0_mask.png")


def test_kaggle_pneumonia_preset_groups_and_labels(tmp_path):
    for rel in ("train/PNEUMONIA/person12_bacteria_1.jpeg", "train/PNEUMONIA/person12_virus_2.jpeg",
                "test/NORMAL/IM-0001-0001.jpeg"):
        _write_case(tmp_path / rel)
    files = ingest.scan_sources([Source(tmp_path, preset="kaggle_pneumonia")], 10).set_index("rel_path")
    assert files.loc["train/PNEUMONIA/person12_bacteria_1.jpeg", "group"] == "person12"
    assert files.loc["train/PNEUMONIA/person12_virus_2.jpeg", "label"] == "PNEUMONIA"
    assert files.loc["test/NORMAL/IM-0001-0001.jpeg", "group"] == "IM-0001"


def test_unknown_preset_names_choices():
    with pytest.raises(ValueError, match="montgomery"):
        Source(Path("."), preset="nope").mask_templates()


def test_decode_shard_accounts_for_every_file(tmp_path):
    mask = _write_case(tmp_path / "images" / "good.png", 200)
    write_png(tmp_path / "masks" / "good.png", mask.astype(np.uint8) * 255)
    _write_case(tmp_path / "images" / "badmask.png", 200)
    write_png(tmp_path / "masks" / "badmask.png", np.zeros((50, 50), np.uint8))
    (tmp_path / "images" / "text.png").write_text("not an image")
    (tmp_path / "images" / "empty.png").write_bytes(b"")
    files = ingest.scan_sources([Source(tmp_path / "images", preset="images_masks")], 10)
    table, images, mask_ids, masks = ingest.decode_shard(files, size=64, progress=False)
    assert len(table) == 4 and table["accepted"].sum() == 2
    rejected = table[~table["accepted"]].set_index("image_id")["reason"]
    assert rejected["empty"] == "empty file" and "not a decodable image" in rejected["text"]
    assert images.shape == (2, 64, 64) and images.dtype == np.uint8
    assert mask_ids == ["good"] and masks.shape == (1, 64, 64)
    bad = table.set_index("image_id").loc["badmask"]
    assert bad["accepted"] and not bad["has_mask"] and "differs from image" in bad["mask_reason"]
    assert (table.loc[table["accepted"], "row"].tolist() == [0, 1])


def test_split_by_patient_is_seeded_and_grouped():
    groups = [f"p{i // 2}" for i in range(200)]  # two images per patient
    a = ingest.assign_split(groups, 0.2, seed=0)
    assert a == ingest.assign_split(groups, 0.2, seed=0)
    assert a != ingest.assign_split(groups, 0.2, seed=1)
    assert sum(v == "val" for v in a.values()) == 20


def test_split_keeps_both_sides_for_tiny_sets():
    assert sorted(ingest.assign_split(["a", "b"], 0.2, 0).values()) == ["train", "val"]
    assert ingest.assign_split(["a"], 0.2, 0) == {"a": "train"}


def test_build_manifest_counts(tmp_path):
    _write_case(tmp_path / "p1_00.png")
    _write_case(tmp_path / "p1_01.png", seed=1)
    (tmp_path / "p2_00.png").write_bytes(b"")
    files = ingest.scan_sources([Source(tmp_path, group_regex=r"^(p\d+)_")], 10)
    decoded, *_ = ingest.decode_shard(files, 32, progress=False)
    manifest, rejected = ingest.build_manifest(files, decoded, 0.2, 0)
    assert len(manifest) + len(rejected) == len(files) == 3
    assert set(manifest["group"]) == {"p1"} and manifest["split"].nunique() == 1
    assert rejected.loc[0, "reason"] == "empty file"
