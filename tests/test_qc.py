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
