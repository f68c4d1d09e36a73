import numpy as np
import pytest

from lungssl import qc


def test_good_lung_pair_passes(toy):
    _, truth = toy
    feats = qc.shape_features(truth)
    assert feats["n_objects"] == 2
    scored = qc.score_features(feats, qc.QCParams())
    assert scored["qc_pass"] and scored["qc_score"] > 0.9


def test_empty_mask_scores_low():
    scored = qc.score_features(qc.shape_features(np.zeros((64, 64), bool)), qc.QCParams())
    assert not scored["qc_pass"] and scored["qc_score"] < 0.3


def test_single_blob_fails():
    m = np.zeros((256, 256), bool)
    m[30:220, 30:220] = True  # one big square: wrong count, too large, not elongated
    assert not qc.score_features(qc.shape_features(m), qc.QCParams())["qc_pass"]


def test_features_are_normalised_to_unit_interval(toy):
    table = qc.qc_table(["a", "b"], np.stack([toy[1], np.zeros_like(toy[1])]), qc.QCParams())
    for name in qc.FEATURES:
        assert table[f"q_{name}"].between(0, 1).all()
    assert table["qc_score"].between(0, 1).all()
    assert list(table["image_id"]) == ["a", "b"]


@pytest.mark.parametrize("value,expected", [(0.2, 1.0), (0.05, 0.3), (0.45, 0.5), (1.0, 0.0)])
def test_desirability_ramp(value, expected):
    assert qc.desirability(value, qc.Range(0.12, 0.40, 0.10)) == pytest.approx(expected, abs=1e-6)


def test_params_from_config_overrides_and_validates():
    p = qc.QCParams.from_config({"threshold": 0.5, "features": {"extent": {"lo": 0.1, "hi": 0.9, "tolerance": 0.1}}})
    assert p.threshold == 0.5 and p.ranges["extent"] == qc.Range(0.1, 0.9, 0.1)
    with pytest.raises(ValueError, match="unknown QC feature"):
        qc.QCParams.from_config({"features": {"colour": {"lo": 0, "hi": 1, "tolerance": 1}}})


def test_summary_counts():
    import pandas as pd

    s = qc.summarize(pd.DataFrame({"qc_score": [0.9, 0.5], "qc_pass": [True, False]}), 0.8)
    assert s["n"] == 2 and s["n_pass"] == 1 and s["pass_rate"] == 0.5


# ---------------------------------------------------------------- cohort-aware QC (shape prior)

def _place(mask: np.ndarray, scale: float, dy: int, dx: int) -> np.ndarray:
    """The mask's content resized by `scale` and moved by (dy, dx) on a same-size canvas."""
    import cv2

    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.uint8)
    small = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                       interpolation=cv2.INTER_NEAREST)
    out = np.zeros_like(mask, dtype=bool)
    y0 = (rows[0] + rows[-1] - small.shape[0]) // 2 + dy
    x0 = (cols[0] + cols[-1] - small.shape[1]) // 2 + dx
    out[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small > 0
    return out


@pytest.fixture
def cohort(toy) -> list[np.ndarray]:
    """A plausible cohort: the toy lung pair at slightly different scales and positions."""
    _, truth = toy
    return [_place(truth, s, dy, dx) for s, dy, dx in
            [(1.0, 0, 0), (0.95, 3, -2), (1.05, -4, 3), (0.9, 5, 0), (1.0, -2, -3), (0.97, 0, 4)]]


def test_prior_of_identical_masks_is_that_mask(toy):
    _, truth = toy
    prior = qc.build_shape_prior([truth] * 5, grid=32)
    assert prior.maps.shape == (3, 32, 32) and prior.n_masks == 1 and prior.n_duplicates == 4  # copies count once
    assert set(np.unique(prior.maps)) <= {0.0, 1.0}
    np.testing.assert_array_equal(prior.binary, qc.shape_codes(truth, 32))
    assert qc.prior_ious(truth, prior) == pytest.approx([1.0, 1.0, 1.0])


def test_prior_streams_over_shards_and_skips_empty_masks(cohort):
    empty = np.zeros_like(cohort[0])
    flat = qc.build_shape_prior(cohort)
    shards = qc.build_shape_prior([np.stack(cohort[:4] + [empty]), np.stack(cohort[4:])])
    np.testing.assert_array_equal(flat.maps, shards.maps)
    assert shards.n_masks == len(cohort) and flat.median == shards.median
    with pytest.raises(ValueError, match="every mask is empty"):
        qc.build_shape_prior([empty, empty])


def test_shifted_and_scaled_copy_scores_high(cohort, toy):
    prior = qc.build_shape_prior(cohort)
    # Bounding-box normalisation removes position and scale from the shape term ...
    far = qc.cohort_scores(_place(toy[1], 0.6, 30, -25), prior, qc.QCParams())
    assert far["q_prior"] > 0.9
    # ... and a copy within the cohort's spread of placement and size passes outright.
    near = qc.cohort_scores(_place(toy[1], 0.95, 4, -3), prior, qc.QCParams())
    assert near["q_prior"] > 0.9 and near["qc_pass"] and not near["qc_outlier"]


def test_single_blob_and_half_mask_score_low(cohort):
    prior = qc.build_shape_prior(cohort)
    blob = np.zeros_like(cohort[0])
    blob[40:200, 60:200] = True
    half = cohort[0].copy()
    half[:, 128:] = False  # one lung missing
    for bad in (blob, half):
        scored = qc.cohort_scores(bad, prior, qc.QCParams())
        assert scored["q_prior"] < 0.6 and not scored["qc_pass"]
    empty = qc.cohort_scores(np.zeros_like(blob), prior, qc.QCParams())
    assert empty["qc_score"] == 0 and empty["qc_outlier"] and not empty["qc_pass"]


def test_z_gate_flags_gross_outlier(cohort, toy):
    prior = qc.build_shape_prior(cohort)
    tiny = _place(toy[1], 0.4, 0, 0)  # right shape, far too small: only the z-scores can tell
    scored = qc.cohort_scores(tiny, prior, qc.QCParams())
    assert scored["q_prior"] > 0.8
    assert scored["qc_outlier"] and scored["q_gate"] == 0 and not scored["qc_pass"]
    assert qc.z_gate(1.0, qc.QCParams()) == 1.0 and qc.z_gate(5.0, qc.QCParams()) == pytest.approx(0.5)
    # The feature that set the gate is named with its signed z: too small, so a negative area z.
    name, z = qc.worst_z(prior, qc.geometry_features(tiny))
    assert abs(z) == pytest.approx(scored["f_max_abs_z"])
    assert name in ("area_fraction", "bbox_height", "bbox_width") and z < 0


def _letterbox(mask: np.ndarray, side: int, top: int, left: int) -> np.ndarray:
    """The whole image shrunk to side x side and placed at (top, left) in padding of the same size."""
    import cv2

    out = np.zeros_like(mask, dtype=bool)
    out[top:top + side, left:left + side] = cv2.resize(mask.astype(np.uint8), (side, side),
                                                       interpolation=cv2.INTER_NEAREST) > 0
    return out


def test_placement_is_measured_in_the_film_box(cohort):
    # An export that shrank the film into a corner of padded canvas: the lungs are fine, only the
    # image coordinates moved. In the film's coordinates it is one of the cohort.
    h = cohort[0].shape[0]
    padded = _letterbox(cohort[1], 160, 10, 90)
    film = (10 / h, 170 / h, 90 / h, 250 / h)
    prior = qc.build_shape_prior(cohort)
    assert not qc.cohort_scores(padded, prior, qc.QCParams())["qc_pass"]  # in the image: too small, off-centre
    scored = qc.cohort_scores(padded, prior, qc.QCParams(), film)
    assert scored["qc_pass"] and not scored["qc_outlier"]
    assert qc.geometry_features(padded, film)["bbox_cx"] == pytest.approx(qc.geometry_features(cohort[1])["bbox_cx"],
                                                                          abs=0.01)
    # The prior itself is built in the films: a cohort of padded exports is not an outlier to itself.
    boxed = [_letterbox(m, 160, 10, 90) for m in cohort]
    prior = qc.build_shape_prior(boxed, films=[film] * len(boxed))
    assert qc.cohort_scores(cohort[1], prior, qc.QCParams())["qc_pass"]
    assert qc.qc_table(["a"], np.stack([padded]), qc.QCParams(), prior, films=[film])["qc_pass"].all()


def test_films_for_reads_boxes_and_names_what_is_missing():
    import pandas as pd

    stats = pd.DataFrame({"image_id": ["a", "b"], "film_top": [0.0, 0.1], "film_bottom": [1.0, 0.9],
                          "film_left": [0.0, 0.2], "film_right": [1.0, 0.8]})
    assert qc.films_for(["b", "a"], stats) == [(0.1, 0.9, 0.2, 0.8), (0.0, 1.0, 0.0, 1.0)]
    with pytest.raises(ValueError, match="no film box for 1 mask"):
        qc.films_for(["c"], stats)
    with pytest.raises(ValueError, match="film_left, film_right"):
        qc.films_for(["a"], stats.drop(columns=["film_left", "film_right"]))
    with pytest.raises(ValueError, match="films has 1 boxes for 2 masks"):
        qc.qc_table(["a", "b"], np.zeros((2, 8, 8), bool), qc.QCParams(), films=[(0.0, 1.0, 0.0, 1.0)])


def test_save_load_prior_round_trip(cohort, tmp_path):
    prior = qc.build_shape_prior(cohort, grid=32)
    path = tmp_path / "sub" / "prior.npz"
    qc.save_prior(prior, path)
    back = qc.load_prior(path)
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # atomic: no temp file left behind
    np.testing.assert_array_equal(back.maps, prior.maps)
    assert back.median == prior.median and back.scale == prior.scale
    assert (back.n_masks, back.n_kept, back.grid) == (prior.n_masks, prior.n_kept, 32)
    assert back.judging == {}  # none recorded: whoever judges against it uses the defaults


def test_prior_keeps_how_the_run_judged_its_masks(cohort, tmp_path):
    import dataclasses

    judging = {"qc": {"cohort_threshold": 0.6, "z_soft": 3.0}, "film_tolerance": 12}
    qc.save_prior(dataclasses.replace(qc.build_shape_prior(cohort, grid=32), judging=judging), tmp_path / "p.npz")
    assert qc.load_prior(tmp_path / "p.npz").judging == judging


def test_qc_table_with_prior_has_cohort_columns(cohort):
    prior = qc.build_shape_prior(cohort)
    masks = np.stack([cohort[0], np.zeros_like(cohort[0])])
    plain = qc.qc_table(["a", "b"], masks, qc.QCParams())
    table = qc.qc_table(["a", "b"], masks, qc.QCParams(), prior=prior)
    assert set(qc.COHORT_COLUMNS).isdisjoint(plain.columns)
    assert set(plain.columns) <= set(table.columns) and set(qc.COHORT_COLUMNS) <= set(table.columns)
    assert list(table["qc_pass"]) == [True, False]
    assert table["qc_score"].between(0, 1).all() and table["q_prior"].between(0, 1).all()


def test_params_from_config_reads_cohort_knobs():
    p = qc.QCParams.from_config({"z_soft": 2, "z_hard": 3, "cohort_threshold": 0.7})
    assert (p.z_soft, p.z_hard, p.cohort_threshold) == (2.0, 3.0, 0.7)
    with pytest.raises(ValueError, match="z_soft"):
        qc.QCParams.from_config({"z_soft": 4, "z_hard": 3})


# ---------------------------------------------------------------- agreement (stability / TTA) column

def test_combine_agreement_is_geometric_mean_and_ignores_missing():
    assert qc.combine_agreement(0.81, 0.49) == pytest.approx(0.63)
    assert qc.combine_agreement(0.8, float("nan")) == 0.8
    assert qc.combine_agreement(0.8, 1.7) == pytest.approx(np.sqrt(0.8))


def test_qc_table_uses_agreement(cohort, toy):
    prior = qc.build_shape_prior(cohort)
    masks = np.stack([toy[1], toy[1], toy[1]])
    base = qc.qc_table(["a", "b", "c"], masks, qc.QCParams(), prior)
    table = qc.qc_table(["a", "b", "c"], masks, qc.QCParams(), prior, np.array([1.0, 0.2, np.nan]))
    for col in ("f_stability", "q_stability", "q_shape"):
        assert col in table.columns
    assert table["q_shape"].tolist() == pytest.approx(base["qc_score"].tolist())
    assert table["qc_score"][0] == pytest.approx(np.sqrt(base["qc_score"][0]))
    assert table["qc_score"][2] == pytest.approx(base["qc_score"][2])  # unknown agreement: shape alone
    assert base["qc_pass"][1] and not table["qc_pass"][1]  # an unstable mask fails
    with pytest.raises(ValueError, match="agreement has"):
        qc.qc_table(["a"], masks[:1], qc.QCParams(), prior, np.array([1.0, 1.0]))


def test_agreement_for_aligns_by_id():
    import pandas as pd

    stats = pd.DataFrame({"image_id": ["b", "a"], "stability": [0.5, 0.9], "tta_dice": [0.7, 0.8]})
    assert qc.agreement_for(["a", "b", "z"], stats, "stability")[:2].tolist() == [0.9, 0.5]
    assert np.isnan(qc.agreement_for(["z"], stats, "stability")[0])
    assert qc.agreement_for(["a"], stats, "tta_dice").tolist() == [0.8]
    with pytest.raises(ValueError, match="no column"):
        qc.agreement_for(["a"], stats, "confidence")


def test_cli_qc_reads_stats(cohort, toy, tmp_path):
    import pandas as pd

    from lungssl.cli import main
    from lungssl.storage import write_mask_stack

    masks = np.stack([toy[1], toy[1]])
    write_mask_stack(tmp_path / "m.npz", ["a", "b"], masks)
    qc.save_prior(qc.build_shape_prior(cohort), tmp_path / "prior.npz")
    pd.DataFrame({"image_id": ["a", "b"], "stability": [1.0, 0.1], "tta_dice": [0.2, 1.0]}).to_parquet(
        tmp_path / "stats.parquet")
    common = ["qc", "--masks", str(tmp_path / "m.npz"), "--prior", str(tmp_path / "prior.npz")]
    assert main([*common, "--stats", str(tmp_path / "stats.parquet"), "--out", str(tmp_path / "q.parquet")]) in (0, None)
    t = pd.read_parquet(tmp_path / "q.parquet")
    assert t["f_stability"].tolist() == [1.0, 0.1] and t["qc_pass"].tolist() == [True, False]
    assert main([*common, "--stats", str(tmp_path / "stats.parquet"), "--agreement", "tta_dice",
                 "--out", str(tmp_path / "t.parquet")]) in (0, None)
    assert pd.read_parquet(tmp_path / "t.parquet")["f_stability"].tolist() == [0.2, 1.0]
    assert main([*common, "--out", str(tmp_path / "s.parquet")]) in (0, None)
    assert "f_stability" not in pd.read_parquet(tmp_path / "s.parquet").columns
    # --films: placement in each image's film box; a table without film boxes is a clear failure.
    pd.DataFrame({"image_id": ["a", "b"], "film_top": 0.0, "film_bottom": 1.0, "film_left": [0.0, 0.25],
                  "film_right": [1.0, 0.75]}).to_parquet(tmp_path / "films.parquet")
    films = ["--films", str(tmp_path / "films.parquet")]
    assert main([*common, *films, "--out", str(tmp_path / "f.parquet")]) in (0, None)
    widths = pd.read_parquet(tmp_path / "f.parquet")["f_bbox_width"].tolist()
    assert widths[1] == pytest.approx(2 * widths[0])  # the same mask in a film half as wide
    no_films = ["--films", str(tmp_path / "stats.parquet")]
    assert main([*common, *no_films, "--out", str(tmp_path / "x.parquet")]) not in (0, None)


def test_model_agreement_is_dice_with_the_models_mask_of_the_same_image(toy):
    shifted = np.roll(toy, 6, axis=1)
    ids, masks = ["a", "b", "c"], np.stack([toy, shifted, toy])
    ref_ids, refs = ["b", "a"], np.stack([toy, toy])  # "c" has no prediction
    t = qc.model_agreement(ids, masks, ref_ids, refs, threshold=0.9)
    assert list(t["image_id"]) == ids and list(t.columns) == ["image_id", "qc_score", "qc_pass"]
    assert t["qc_score"][0] == 1.0 and 0 < t["qc_score"][1] < 1.0 and np.isnan(t["qc_score"][2])
    assert list(t["qc_pass"]) == [True, t["qc_score"][1] >= 0.9, False]


def test_rank_mean_gives_each_score_an_equal_say_whatever_its_scale():
    narrow = [0.91, 0.93, 0.95, 0.97]  # e.g. a Dice with the model
    wide = [0.90, 0.60, 0.80, 0.70]    # e.g. a shape score
    assert qc.percentile_ranks([0.5, np.nan, 0.5, 0.9]).tolist() == [0.625, 0.25, 0.625, 1.0]
    assert qc.rank_mean(narrow, wide).tolist() == [0.625, 0.375, 0.75, 0.75]
    # the geometric mean follows the wide score alone
    assert np.argsort(np.sqrt(np.multiply(narrow, wide))).tolist() == np.argsort(wide).tolist()


def test_combine_ranks_averages_cohort_ranks_and_passes_only_where_every_qc_passes():
    import pandas as pd

    shape = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "qc_score": [0.70, 0.95, 0.80, 0.90],
                          "qc_pass": [False, True, True, True]})
    model = pd.DataFrame({"image_id": ["d", "c", "b"], "qc_score": [0.99, np.nan, 0.91],  # "a" has none
                          "qc_pass": [True, False, True]})
    t = qc.combine_ranks({"shape": shape, "model": model}).set_index("image_id")
    assert sorted(t.index) == ["a", "b", "c", "d"]  # every mask of either table is kept
    assert t["rank_shape"].tolist() == [0.25, 1.0, 0.5, 0.75]
    assert t.loc["d", "rank_model"] == 1.0 and t.loc["b", "rank_model"] == 0.75
    assert t.loc["a", "rank_model"] == t.loc["c", "rank_model"] == 0.375  # no score: tied last
    assert t["qc_score"].tolist() == pytest.approx([0.3125, 0.875, 0.4375, 0.875])
    assert t["qc_pass"].tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="no QC tables"):
        qc.combine_ranks({})


def test_qc_combine_cli_writes_table_and_summary(tmp_path):
    import json

    import pandas as pd

    from lungssl.cli import main

    for name, scores in (("shape", [0.9, 0.8]), ("agree", [0.95, 0.99])):
        pd.DataFrame({"image_id": ["a", "b"], "qc_score": scores, "qc_pass": [True, True]}).to_parquet(
            tmp_path / f"{name}.parquet")
    out, summary = tmp_path / "both.parquet", tmp_path / "both.json"
    args = ["qc-combine", "--tables", str(tmp_path / "shape.parquet"), str(tmp_path / "agree.parquet"),
            "--out", str(out), "--summary", str(summary)]
    assert main(args) in (0, None)
    t = pd.read_parquet(out)
    assert {"rank_shape", "rank_agree", "qc_score", "qc_pass"} <= set(t.columns)
    assert t["qc_score"].tolist() == [0.75, 0.75] and json.loads(summary.read_text())["n_pass"] == 2
    clash = ["qc-combine", "--tables", str(tmp_path / "shape.parquet"), str(tmp_path / "shape.parquet"),
             "--out", str(out), "--summary", str(summary)]
    assert main(clash) not in (0, None)


def test_qc_quality_counts_precision_recall_and_rank_correlation():
    import pandas as pd

    from lungssl.evaluation import qc_quality

    t = pd.DataFrame({"dice": [0.95, 0.9, 0.8, 0.5, 0.92, np.nan],
                      "qc_score": [0.9, 0.8, 0.7, 0.1, 0.6, 0.5],
                      "qc_pass": [True, True, True, False, False, True]})
    q = qc_quality(t, good=0.85)
    assert q["n"] == 5 and q["pass_rate"] == 0.6
    assert q["precision"] == pytest.approx(2 / 3) and q["recall"] == pytest.approx(2 / 3)
    assert q["spearman"] == pytest.approx(0.7)
