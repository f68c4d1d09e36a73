"""Tests for the embedded synthetic chest X-ray dataset."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from lungssl import synthetic as S

KINDS = ("",) + S.HARD_KINDS


def _read(path: Path) -> np.ndarray:
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)


def _components(mask: np.ndarray) -> int:
    return cv2.connectedComponents((mask > 0).astype(np.uint8))[0] - 1


def _mediastinum_gap(mask: np.ndarray) -> np.ndarray:
    """Pixels between the two lungs on the rows where both are present."""
    n, lab, stats, cent = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8))
    left, right = np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:2] + 1
    if cent[left][0] > cent[right][0]:
        left, right = right, left
    gap = np.zeros(mask.shape, bool)
    for y in range(mask.shape[0]):
        xl, xr = np.nonzero(lab[y] == left)[0], np.nonzero(lab[y] == right)[0]
        if len(xl) and len(xr) and xl.max() + 2 < xr.min():
            gap[y, xl.max() + 2 : xr.min() - 1] = True
    return gap


@pytest.fixture(scope="module")
def normal_cases() -> list[tuple[S.SyntheticCase, np.ndarray]]:
    out = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        a = S.sample_anatomy(rng)
        acq = S.sample_acquisition(rng, 320, 288, "")
        out.append(S.render(a, acq, "", rng))
    return out


@pytest.mark.parametrize("hard", KINDS)
def test_case_shape_dtype_and_binary_mask(hard: str) -> None:
    case = S.make_case(np.random.default_rng(1), hard=hard, height=300, width=260)
    assert case.hard == hard
    assert case.image.shape == case.mask.shape == (300, 260)
    assert case.image.dtype == case.mask.dtype == np.uint8
    assert set(np.unique(case.mask)) <= {0, 255}
    assert (case.mask > 0).mean() > 0.05


def test_default_size_range() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        h, w = S.make_case(rng).image.shape
        assert 256 <= h <= 512 and 256 <= w <= 512


def test_two_lungs_mostly(normal_cases) -> None:
    counts = [_components(c.mask) for c, _ in normal_cases]
    assert sum(n == 2 for n in counts) >= 0.9 * len(counts), counts


def test_mask_inside_body_and_off_the_border(normal_cases) -> None:
    for case, body in normal_cases:
        lung = case.mask > 0
        assert not (lung & (body == 0)).any()
        assert not (lung[0].any() or lung[-1].any() or lung[:, 0].any() or lung[:, -1].any())


def test_lungs_darker_than_mediastinum_brighter_than_air(normal_cases) -> None:
    for case, body in normal_cases:
        lung = case.mask > 0
        lung_mean = case.image[lung].mean()
        assert lung_mean + 15 < case.image[_mediastinum_gap(case.mask)].mean()
        air = (body == 0) & (case.image > 0)  # outside the body, not padding
        if air.sum() > 100:
            assert case.image[air].mean() + 15 < lung_mean


@pytest.mark.parametrize("hard", ["consolidation", "effusion"])
def test_opacities_whiten_lung_but_keep_true_mask(hard: str) -> None:
    def draw(kind: str) -> S.SyntheticCase:
        rng = np.random.default_rng(11)
        a = S.sample_anatomy(rng)
        acq = S.sample_acquisition(rng, 320, 320, kind)
        return S.render(a, acq, kind, rng)[0]

    normal, sick = draw(""), draw(hard)
    np.testing.assert_array_equal(normal.mask, sick.mask)
    lung = normal.mask > 0
    assert sick.image[lung].mean() > normal.image[lung].mean() + 10


def test_low_contrast_compresses_range() -> None:
    spread = {}
    for kind in ("", "low_contrast"):
        imgs = [S.make_case(np.random.default_rng(s), kind, 256, 256).image for s in range(4)]
        spread[kind] = np.mean([np.percentile(i, 95) - np.percentile(i, 5) for i in imgs])
    assert spread["low_contrast"] < 0.6 * spread[""]


def test_make_case_deterministic() -> None:
    a = S.make_case(np.random.default_rng(42), "effusion")
    b = S.make_case(np.random.default_rng(42), "effusion")
    c = S.make_case(np.random.default_rng(43), "effusion")
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_plan_hard_fraction_and_patients() -> None:
    plan = S.plan_dataset(200, seed=0, hard_fraction=0.2)
    assert len(plan) == 200 and plan["name"].is_unique
    hard = plan["hard"][plan["hard"] != ""]
    assert len(hard) == 40
    assert set(hard) == set(S.HARD_KINDS)
    views = plan.groupby("patient").size()
    assert views.max() == 2 and 0.05 < (views == 2).mean() < 0.3
    assert (S.plan_dataset(50, 0, 0.0)["hard"] == "").all()
    assert (S.plan_dataset(50, 0, 1.0)["hard"] != "").all()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("ds") / "synthetic"
    return out, S.write_dataset(out, n=24, seed=7, hard_fraction=0.25, min_size=64, max_size=128)


def test_write_dataset_layout(dataset) -> None:
    out, table = dataset
    assert sorted(p.name for p in out.parent.iterdir()) == ["synthetic"]  # no tmp left
    assert list(table.columns) == ["name", "patient", "width", "height", "hard"]
    csv = pd.read_csv(out / "cases.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(csv, table, check_dtype=False)
    images = sorted(p.stem for p in (out / "images").glob("*.png"))
    masks = sorted(p.stem for p in (out / "masks").glob("*.png"))
    assert images == masks == sorted(table["name"])
    for row in table.itertuples():
        assert re.fullmatch(r"p\d{4}_\d{2}", row.name) and row.name.startswith(row.patient + "_")
        img, mask = _read(out / "images" / f"{row.name}.png"), _read(out / "masks" / f"{row.name}.png")
        assert img.shape == mask.shape == (row.height, row.width)
        assert 64 <= row.height <= 128 and 64 <= row.width <= 128
        assert set(np.unique(mask)) <= {0, 255}
    assert (table.groupby("patient").size() == 2).any()
    assert (table["hard"] != "").sum() == 6


def test_write_dataset_byte_identical_and_seed_sensitive(dataset, tmp_path) -> None:
    out, table = dataset
    again = tmp_path / "again"
    S.write_dataset(again, n=24, seed=7, hard_fraction=0.25, min_size=64, max_size=128)
    for sub in ("images", "masks"):
        for p in (out / sub).iterdir():
            assert p.read_bytes() == (again / sub / p.name).read_bytes()
    assert (out / "cases.csv").read_bytes() == (again / "cases.csv").read_bytes()
    S.write_dataset(tmp_path / "other", n=24, seed=8, hard_fraction=0.25, min_size=64, max_size=128)
    first = f"{table['name'].iloc[0]}.png"
    assert (out / "images" / first).read_bytes() != (tmp_path / "other" / "images" / first).read_bytes()


def test_write_dataset_replaces_existing(tmp_path) -> None:
    out = tmp_path / "ds"
    (out / "images").mkdir(parents=True)
    (out / "stale.txt").write_text("old")
    S.write_dataset(out, n=2, seed=0, min_size=64, max_size=64)
    assert not (out / "stale.txt").exists()
    assert len(list((out / "images").iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch) -> None:
    calls = {"n": 0}
    real = S._png

    def flaky(path: Path, img: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("disk full")
        real(path, img)

    monkeypatch.setattr(S, "_png", flaky)
    with pytest.raises(OSError):
        S.write_dataset(tmp_path / "ds", n=5, min_size=64, max_size=64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n must be"),
        ({"min_size": 32, "max_size": 64}, "min_size must be"),
        ({"min_size": 300, "max_size": 200}, "must be <= max_size"),
        ({"hard_fraction": -0.1}, "hard_fraction"),
        ({"hard_fraction": 1.5}, "hard_fraction"),
    ],
)
def test_bad_arguments(tmp_path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        S.write_dataset(tmp_path / "ds", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_bad_hard_kind() -> None:
    with pytest.raises(ValueError, match="hard"):
        S.make_case(np.random.default_rng(0), hard="pneumothorax")
