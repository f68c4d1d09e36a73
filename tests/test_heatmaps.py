"""Heatmaps of suspicious opacities: unit tests on synthetic radiographs with a known opacity."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from lungssl import heatmaps as hm
from lungssl.synthetic import make_case

P = hm.HeatmapParams()


def _case(seed: int, hard: str = ""):
    c = make_case(np.random.default_rng(seed), hard=hard, height=256, width=256)
    return c.image, c.mask > 0


@pytest.fixture(scope="module")
def normal_model():
    codes = [hm.image_code(*_case(seed), P) for seed in range(40)]
    ref = hm.choose_reference(np.array([c.deficit for c in codes]), hm.HeatmapParams(reference_fraction=0.5))
    return hm.fit_normal_model(np.stack([codes[i].atlas for i in ref]), P)


def _with_opacity(image: np.ndarray, mask: np.ndarray, strength: float = 70.0):
    """A bright soft blob centred inside the image-left lung; returns (image, blob mask)."""
    _, left, _ = hm.split_lungs(mask)
    ys, xs = np.nonzero(left)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    blob = np.zeros(image.shape, np.float32)
    cv2.circle(blob, (cx, cy), 18, 1.0, -1)
    blob = cv2.GaussianBlur(blob, (0, 0), 5)
    out = np.clip(image.astype(np.float32) + strength * blob, 0, 255).astype(np.uint8)
    return out, blob > 0.5


def test_lung_field_restores_a_lost_lung_from_its_mirror_image():
    _, mask = _case(3)
    _, left, right = hm.split_lungs(mask)
    field = hm.lung_field(left)  # the right lung "lost", e.g. to a white-out
    assert hm.lung_field(np.zeros_like(mask)).sum() == 0
    # the mirror image of the left lung lands where the right lung was
    overlap = np.count_nonzero(field & right) / np.count_nonzero(right)
    assert overlap > 0.6
    assert hm.lung_deficit(left, hm.lung_field(mask)) == pytest.approx(
        1 - np.count_nonzero(left & hm.lung_field(mask)) / np.count_nonzero(hm.lung_field(mask)))


def test_heatmap_peaks_at_an_inserted_opacity(normal_model):
    image, mask = _case(100)
    sick, blob = _with_opacity(image, mask)
    clean_z = hm.heatmap(image, mask, normal_model, P)
    z = hm.heatmap(sick, mask, normal_model, P)
    rise = z - clean_z
    assert blob[np.unravel_index(np.argmax(rise), rise.shape)], "the heat rises most inside the opacity"
    assert z[blob].mean() > clean_z[blob].mean() + P.flag_z
    assert (z[blob] > P.flag_z).mean() > 0.8
    before, after = hm.heatmap_scores(clean_z, mask, P), hm.heatmap_scores(z, mask, P)
    assert after["score"] > before["score"] and after["left_flagged"] > before["left_flagged"]
    assert after["right_flagged"] == pytest.approx(before["right_flagged"], abs=0.02)


def test_healthy_lungs_are_colder_than_diseased_ones(normal_model):
    """Healthy synthetic lungs flag a minority of the field; the same lungs with an opacity, more."""
    healthy, sick = [], []
    for seed in range(200, 210):
        image, mask = _case(seed)
        healthy.append(hm.heatmap_scores(hm.heatmap(image, mask, normal_model, P), mask, P)["flagged_fraction"])
        opaque = _with_opacity(image, mask)[0]
        sick.append(hm.heatmap_scores(hm.heatmap(opaque, mask, normal_model, P), mask, P)["flagged_fraction"])
    assert np.median(healthy) < 0.2
    assert all(s > h for s, h in zip(sick, healthy))


def test_heatmap_is_zero_outside_the_lung_field(normal_model):
    image, mask = _case(101)
    z = hm.heatmap(*_with_opacity(image, mask)[:1], mask, normal_model, P)
    assert (z >= 0).all() and not z[~hm.lung_field(mask)].any()


def test_no_lung_found_scores_as_most_suspicious(normal_model):
    image, _ = _case(102)
    empty = np.zeros(image.shape, bool)
    scores = hm.heatmap_scores(hm.heatmap(image, empty, normal_model, P), empty, P)
    assert scores["score"] == float("inf") and scores["lung_deficit"] == 1.0


def test_heatmap_any_size_matches_the_input_size(normal_model):
    image, mask = _case(103)
    big = cv2.resize(image, (600, 500))
    big_mask = cv2.resize(mask.astype(np.uint8), (600, 500), interpolation=cv2.INTER_NEAREST) > 0
    z, scores = hm.heatmap_any_size(big, big_mask, normal_model, P)
    assert z.shape == (500, 600) and np.isfinite(scores["score"])


def test_quantise_round_trip():
    z = np.array([0.0, 0.01, 1.0, 2.5, 100.0], np.float32)
    back = hm.dequantise(hm.quantise(z))
    assert np.allclose(back[:4], z[:4], atol=hm.HEAT_STEP / 2) and back[4] == pytest.approx(255 * hm.HEAT_STEP)


def test_choose_reference_takes_the_most_complete_fraction_and_caps_it():
    deficits = np.linspace(1, 0, 100)
    ref = hm.choose_reference(deficits, hm.HeatmapParams(reference_fraction=0.2))
    assert set(ref) == set(range(80, 100))
    capped = hm.choose_reference(deficits, hm.HeatmapParams(reference_fraction=0.5, max_reference=10), seed=1)
    assert len(capped) == 10 and set(capped) <= set(range(50, 100))
    with pytest.raises(ValueError, match="no images"):
        hm.choose_reference(np.zeros(0), P)


def test_fit_normal_model_refuses_empty_fields():
    with pytest.raises(ValueError, match="no lung field"):
        hm.fit_normal_model(np.full((3, 8, 8), np.nan, np.float32), P)


def test_normal_model_save_load(tmp_path, normal_model):
    normal_model.save(tmp_path / "m.npz")
    back = hm.NormalModel.load(tmp_path / "m.npz")
    assert np.array_equal(back.median, normal_model.median) and back.n_reference == normal_model.n_reference


def test_roc_curve_known_values():
    _, _, auc = hm.roc_curve(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool))
    assert auc == pytest.approx(0.75)
    _, _, tied = hm.roc_curve(np.ones(4), np.array([0, 1, 0, 1], bool))
    assert tied == pytest.approx(0.5)
    with pytest.raises(ValueError):
        hm.roc_curve(np.ones(3), np.ones(3, bool))


def test_auc_table_per_top_folder():
    manifest = pd.DataFrame({
        "image_id": list("abcdef"),
        "label": ["NORMAL", "PNEUMONIA", "NORMAL", "PNEUMONIA", "PNEUMONIA", ""],
        "rel_path": ["train/N/a", "train/P/b", "test/N/c", "test/P/d", "test/P/e", "x/f"],
    })
    scores = pd.DataFrame({"image_id": list("abcdef"), "score": [0.1, 0.9, 0.5, 0.4, 0.6, 9.0]})
    t = hm.auc_table(scores, manifest, "PNEUMONIA", "NORMAL").set_index("subset")
    assert t.loc["train", "auc"] == 1.0 and t.loc["test", "auc"] == 0.5 and t.loc["all", "n"] == 5
    assert hm.auc_table(scores, manifest.assign(label=""), "PNEUMONIA", "NORMAL").empty


def test_normal_model_keeps_its_parameters_and_refuses_other_files(tmp_path, normal_model):
    normal_model.save(tmp_path / "m.npz")
    assert hm.NormalModel.load(tmp_path / "m.npz").params == P
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a lungssl normal lung model"):
        hm.NormalModel.load(tmp_path / "bad.npz")


def test_heatmap_with_scores_is_heatmap_and_its_scores(normal_model):
    image, mask = _case(104)
    sick = _with_opacity(image, mask)[0]
    z, scores = hm.heatmap_with_scores(sick, mask, normal_model, P)
    assert np.array_equal(z, hm.heatmap(sick, mask, normal_model, P))
    assert scores == hm.heatmap_scores(z, mask, P)
