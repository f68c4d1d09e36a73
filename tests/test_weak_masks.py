from dataclasses import replace

import cv2
import numpy as np
import pytest

from lungssl import weak_masks as wm
from lungssl.evaluation import dice


def test_weak_mask_finds_toy_lungs(toy):
    image, truth = toy
    mask = wm.weak_mask(image)
    assert mask.dtype == bool and mask.shape == image.shape
    assert dice(mask, truth) > 0.85


def test_weak_mask_is_deterministic(toy):
    image, _ = toy
    assert np.array_equal(wm.weak_mask(image), wm.weak_mask(image))


def test_weak_mask_scales_with_resolution():
    from tests.conftest import toy_radiograph

    image, truth = toy_radiograph(size=512)
    assert dice(wm.weak_mask(image), truth) > 0.85


def test_weak_mask_rejects_wrong_input():
    with pytest.raises(ValueError, match="2-D uint8"):
        wm.weak_mask(np.zeros((64, 64, 3), np.uint8))


def test_blank_image_gives_empty_mask():
    assert not wm.weak_mask(np.full((128, 128), 90, np.uint8)).any()


def test_suppress_ribs_removes_thin_bright_band():
    img = np.full((256, 256), 60, np.uint8)
    img[120:124, :] = 200  # a 4 px "rib"
    out = wm.suppress_ribs(img, px=15)
    assert out[122].max() < 100


def test_remove_border_objects_drops_padding():
    m = np.zeros((100, 100), bool)
    m[:10, :] = True  # padding bar along the top edge
    m[40:60, 40:60] = True
    out = wm.remove_border_objects(m, 1)
    assert not out[:10].any() and out[50, 50]


def test_keep_largest_objects_keeps_two_and_drops_small():
    m = np.zeros((100, 100), bool)
    m[10:40, 10:30] = True
    m[10:40, 60:85] = True
    m[80:90, 80:90] = True
    m[90, 5] = True
    out = wm.keep_largest_objects(m, keep=2, min_fraction=0.005)
    assert out[20, 20] and out[20, 70] and not out[85, 85] and not out[90, 5]


def test_threshold_fixed_level():
    img = np.array([[10, 200]], np.uint8)
    assert wm.threshold(img, "100", 0).tolist() == [[False, True]]


def test_params_from_config_rejects_unknown_key():
    with pytest.raises(ValueError, match="clahe_clp"):
        wm.WeakMaskParams.from_config({"clahe_clp": 2})


def test_params_from_config_accepts_numeric_threshold():
    assert wm.WeakMaskParams.from_config({"threshold": 120, "method": "baseline"}).threshold == "120"


def test_weak_masks_stack(toy):
    image, _ = toy
    out = wm.weak_masks(np.stack([image, image]), wm.WeakMaskParams())
    assert out.shape == (2, *image.shape) and np.array_equal(out[0], out[1])


# ---------------------------------------------------------------- the "pair" method

PAIR = wm.WeakMaskParams(method="pair")


def test_pair_method_finds_toy_lungs_left_and_right(toy):
    image, truth = toy
    lungs = wm.weak_lungs(image, PAIR)
    assert lungs.dtype == np.int8 and set(np.unique(lungs)) == {0, 1, 2}
    assert (lungs[:, :128] != 2).all() and (lungs[:, 128:] != 1).all()
    assert dice(lungs > 0, truth) > 0.85


def test_pair_method_scales_with_resolution():
    from tests.conftest import toy_radiograph

    image, truth = toy_radiograph(size=512)
    assert dice(wm.weak_mask(image, PAIR), truth) > 0.85


def test_pair_method_blank_image_gives_empty_mask():
    assert not wm.weak_mask(np.full((128, 128), 90, np.uint8), PAIR).any()


def test_pair_method_rejects_wrong_input():
    with pytest.raises(ValueError, match="2-D uint8"):
        wm.weak_mask(np.zeros((64, 64, 3), np.uint8), PAIR)


def test_find_midline_on_symmetric_toy_image():
    img = np.full((256, 256), 60, np.uint8)
    img[:, 118:139] = 200  # bright mediastinum centred on column 128
    assert abs(wm.find_midline(img, (0, 256, 0, 256)) - 128) <= 2
    img = np.roll(img, -20, axis=1)  # patient off centre
    assert abs(wm.find_midline(img, (0, 256, 0, 256)) - 108) <= 2


def test_find_film_cuts_uniform_padding():
    img = np.zeros((256, 256), np.uint8)
    img[20:200, 30:220] = np.random.default_rng(0).integers(50, 200, (180, 190))
    assert wm.find_film(img) == (20, 200, 30, 220)
    assert wm.find_film(np.zeros((64, 64), np.uint8)) == (0, 64, 0, 64)  # no content: whole image


def test_find_film_ignores_a_marker_burnt_into_the_padding():
    img = np.zeros((256, 256), np.uint8)
    img[:, 10:150] = np.random.default_rng(0).integers(50, 200, (256, 140))
    img[20:30, 230:245] = 255  # a side marker ("L") in the padding, apart from the film
    assert wm.find_film(img) == (0, 256, 10, 150)


def _cand(left: int, width: int, height: int, area: int, top: int = 40) -> wm.Candidate:
    return wm.Candidate(level=0, label=1, area=area, left=left, top=top, width=width, height=height,
                        cx=left + width / 2)


def test_pair_score_prefers_left_right_pair_over_single_blob():
    film, mid = (0, 256, 0, 256), 128
    a, b = _cand(40, 70, 150, 7000), _cand(146, 70, 150, 7000)
    pair = wm.pair_score(a, b, mid, film, PAIR)
    assert pair > 0
    assert wm.pair_score(a, None, mid, film, PAIR) == 0.0  # one blob is not a pair
    lopsided = wm.pair_score(a, _cand(146, 40, 60, 1800), mid, film, PAIR)
    assert lopsided < pair
    crossing = wm.pair_score(_cand(40, 120, 150, 7000), b, mid, film, PAIR)  # left lung over the midline
    assert crossing < pair


def test_side_candidates_reject_border_touching_component():
    x = np.full((256, 256), 200, np.uint8)
    x[40:220, 2:60] = 20  # outside air along the left film edge, bigger and darker than the lung
    x[60:200, 70:115] = 40  # left lung
    x[60:200, 141:186] = 40  # right lung
    labels, a, b = wm.side_candidates(x, 50, (0, 256, 0, 256), 128, PAIR)
    assert a is not None and b is not None
    assert a.left == 70 and b.left == 141
    assert labels[100, 30] != a.label


def test_side_candidates_reject_far_lateral_component():
    x = np.full((256, 256), 200, np.uint8)
    x[60:200, 10:40] = 40  # lateral dark fold, not touching the edge but far from the midline
    labels, a, _ = wm.side_candidates(x, 50, (0, 256, 0, 256), 128, PAIR)
    assert a is None


def test_best_pair_labels_both_lungs(toy):
    image, truth = toy
    x = wm.normalise(image, PAIR, PAIR.pair_clahe_clips[0])
    lungs = wm.best_pair(x, (0, 256, 0, 256), wm.find_midline(x, (0, 256, 0, 256)), PAIR)
    assert (lungs == 1).any() and (lungs == 2).any()
    assert dice(lungs > 0, truth) > 0.6


def test_refine_watershed_keeps_mask_near_markers(toy):
    import cv2

    image, truth = toy
    x = wm.normalise(image, PAIR, PAIR.pair_clahe_clips[0])
    rough = cv2.erode(truth.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(np.int8)
    rough[:, 128:] *= 2  # right lung gets label 2
    out = wm.refine_watershed(x, rough, 4, 14)
    assert dice(out > 0, truth) > dice(rough > 0, truth)
    near = cv2.dilate((rough > 0).astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
    assert not (out > 0)[~near].any()  # nothing beyond the dilated markers
    assert (out[rough == 1] == 1).mean() > 0.95 and (out[rough == 2] == 2).mean() > 0.95
    assert not wm.refine_watershed(x, np.zeros_like(rough), 4, 14).any()


def test_refine_watershed_puts_boundary_on_edge_centre():
    import cv2

    # A dark lung with a soft (blurred) edge: the boundary belongs at the middle of the ramp,
    # where the gradient peaks, not at its dark foot.
    x = np.full((256, 256), 200, np.uint8)
    x[60:200, 60:120] = 50
    x[60:200, 140:200] = 50
    x = cv2.GaussianBlur(x, (0, 0), 4)
    truth = np.zeros((256, 256), np.int8)
    truth[60:200, 60:120] = 1
    truth[60:200, 140:200] = 2
    rough = cv2.erode(truth.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(np.int8)
    out = wm.refine_watershed(x, rough, 4, 14)
    cols = np.flatnonzero((out == 1).any(axis=0))
    rows = np.flatnonzero((out == 1).any(axis=1))
    assert abs(cols[0] - 60) <= 1 and abs(cols[-1] - 119) <= 1
    assert abs(rows[0] - 60) <= 1 and abs(rows[-1] - 199) <= 1
    assert dice(out > 0, truth > 0) > 0.98


def test_refine_watershed_band_equals_whole_image_flood(toy):
    import cv2
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    image, truth = toy
    x = wm.normalise(image, PAIR, 2.0)
    rough = cv2.erode(truth.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(np.int8)
    rough[:, 128:] *= 2
    markers = np.zeros(x.shape, np.int32)
    for lab in (1, 2):
        markers[cv2.erode((rough == lab).astype(np.uint8), wm._disk(4)) > 0] = lab
    markers[cv2.dilate((rough > 0).astype(np.uint8), wm._disk(14)) == 0] = 3
    whole = watershed(sobel(x.astype(np.float32) / 255.0), markers)
    assert np.array_equal(wm.refine_watershed(x, rough, 4, 14), np.where(whole == 3, 0, whole))


def test_snap_to_edges_moves_a_shrunken_mask_onto_the_lungs(toy):
    import cv2

    image, truth = toy
    # A model's mask that sits 3 px inside the edges everywhere, as one trained on cautious targets.
    shrunk = cv2.erode(truth.astype(np.uint8), wm._disk(3)) > 0
    snapped = wm.snap_to_edges(image, shrunk, PAIR)
    assert snapped.dtype == bool and dice(snapped, truth) > dice(shrunk, truth) + 0.02
    # The model decides what is lung: nothing is added beyond the band around its mask.
    near = cv2.dilate(shrunk.astype(np.uint8), wm._disk(7)) > 0
    assert not snapped[~near].any()
    assert not wm.snap_to_edges(image, np.zeros_like(truth), PAIR).any()
    with pytest.raises(ValueError, match="differ in shape"):
        wm.snap_to_edges(image, truth[:100], PAIR)


def test_pair_method_falls_back_to_next_clahe_clip(toy, monkeypatch):
    image, truth = toy
    clips = []
    real_normalise, real_best_pair = wm.normalise, wm.best_pair

    def normalise(image, params, clip):
        clips.append(clip)
        return real_normalise(image, params, clip)

    def best_pair(x, film, midline, params):
        # the first (gentle) clip finds no plausible pair; the next one must be tried
        return np.zeros(x.shape, np.int8) if len(clips) == 1 else real_best_pair(x, film, midline, params)

    monkeypatch.setattr(wm, "normalise", normalise)
    monkeypatch.setattr(wm, "best_pair", best_pair)
    mask = wm.weak_lungs(image, replace(PAIR, pair_clahe_clips=(0.5, 2.0), stability=()))
    assert clips == [0.5, 2.0]
    assert dice(mask > 0, truth) > 0.6


def test_pair_method_keeps_first_clip_with_a_pair(toy):
    image, _ = toy
    first = wm.weak_lungs(image, replace(PAIR, pair_clahe_clips=(0.5,)))
    assert (wm.weak_lungs(image, replace(PAIR, pair_clahe_clips=(0.5, 2.0))) == first).all()


def test_smooth_lungs_fills_holes_and_drops_specks():
    lungs = np.zeros((256, 256), np.int8)
    lungs[50:200, 50:110] = 1
    lungs[100:110, 70:80] = 0  # a vessel hole
    lungs[10:14, 10:14] = 1  # a speck
    lungs[50:200, 146:206] = 2
    out = wm.smooth_lungs(lungs, 11)
    assert out[105, 75] == 1 and out[12, 12] == 0 and out[120, 170] == 2


def test_smaller_opening_keeps_a_sharp_costophrenic_angle():
    # A lung whose lateral lower corner narrows to a sharp angle, as the costophrenic recess does.
    lungs = np.zeros((256, 256), np.int8)
    pts = np.array([[60, 40], [110, 40], [110, 200], [40, 215]], np.int32)  # (x, y): tip at bottom left
    cv2.fillPoly(lungs, [pts], 1)
    wide, narrow = wm.smooth_lungs(lungs, 11), wm.smooth_lungs(lungs, 11, open_px=5)
    tip = np.s_[195:216, 38:60]
    assert narrow[tip].sum() > wide[tip].sum()
    assert (narrow > 0).sum() <= (lungs > 0).sum() + 5  # the opening only removes, closing adds nothing here


def _lung_with_notches() -> np.ndarray:
    """A left-of-image lung (rows 40-200, columns 40-110) with a notch on each side."""
    lung = np.zeros((256, 256), bool)
    lung[40:200, 40:110] = True
    lung[120:150, 40:60] = False  # lateral notch: a breast shadow's bite
    lung[80:120, 95:110] = False  # medial bay: the heart
    return lung


def test_fill_lateral_notches_fills_the_outer_border_only():
    lung = _lung_with_notches()
    out = wm.fill_lateral_notches(lung, lateral_is_left=True)
    assert out[120:150, 40:60].all()  # the lateral notch is lung again
    assert not out[80:120, 95:110].any()  # the medial bay stays
    assert (out >= lung).all() and not out[:40].any() and not out[200:].any()


def test_fill_lateral_notches_mirrors_for_the_other_lung():
    lung = _lung_with_notches()[:, ::-1]
    out = wm.fill_lateral_notches(lung, lateral_is_left=False)
    assert np.array_equal(out, wm.fill_lateral_notches(lung[:, ::-1], lateral_is_left=True)[:, ::-1])
    assert out[120:150, 196:216].all() and not out[80:120, 146:161].any()


def test_fill_lateral_notches_leaves_empty_and_convex_masks_alone():
    assert not wm.fill_lateral_notches(np.zeros((64, 64), bool), True).any()
    box = np.zeros((64, 64), bool)
    box[10:50, 10:30] = True
    assert np.array_equal(wm.fill_lateral_notches(box, True), box)


def test_smooth_lungs_fills_lateral_notches_when_asked():
    lungs = np.zeros((256, 256), np.int8)
    lungs[_lung_with_notches()] = 1
    lungs[_lung_with_notches()[:, ::-1]] = 2
    plain, filled = wm.smooth_lungs(lungs, 11), wm.smooth_lungs(lungs, 11, lateral_hull=True)
    assert (plain[125:145, 42:58] == 0).all() and (filled[125:145, 42:58] == 1).all()
    assert (filled[125:145, 198:214] == 2).all() and (filled[85:115, 100:108] == 0).all()


def test_dispatcher_picks_the_method(toy):
    image, _ = toy
    assert np.array_equal(wm.weak_mask(image), wm.pair_mask(image, wm.WeakMaskParams()))
    assert np.array_equal(wm.weak_mask(image, PAIR), wm.pair_mask(image, PAIR))
    base = wm.weak_mask(image, wm.WeakMaskParams.from_config({"method": "baseline"}))
    assert np.array_equal(base, wm.baseline_mask(image))


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="unknown weak-mask method"):
        wm.weak_mask(np.zeros((64, 64), np.uint8), wm.WeakMaskParams(method="nope"))
    with pytest.raises(ValueError, match="unknown weak-mask method"):
        wm.WeakMaskParams.from_config({"method": "nope"})


def test_params_from_config_accepts_pair_parameters():
    p = wm.WeakMaskParams.from_config({"method": "pair", "pair_percentiles": [20, 40], "pair_marker_dilate_px": 10})
    assert p.method == "pair" and p.pair_percentiles == (20, 40) and p.pair_marker_dilate_px == 10
    assert wm.WeakMaskParams().method == "pair"  # the most accurate method is the default


# ---------------------------------------------------------------- stability (label-free QC signal)

def test_stability_is_high_for_clean_lungs_and_mask_unchanged(toy):
    image, _ = toy
    mask, stability = wm.pair_mask_with_stability(image)
    assert np.array_equal(mask, wm.pair_mask(image))
    assert stability > 0.95


def test_stability_is_low_for_ambiguous_edges(toy):
    import cv2

    # Ramps about as wide as a lung: the gradient has no clear ridge for the watershed to snap to.
    image = cv2.GaussianBlur(toy[0], (0, 0), 25)
    _, stability = wm.pair_mask_with_stability(image)
    assert stability < 0.85 < wm.pair_mask_with_stability(toy[0])[1]


def test_stability_of_blank_image_is_zero_and_can_be_switched_off(toy):
    assert wm.pair_mask_with_stability(np.full((128, 128), 90, np.uint8))[1] == 0.0
    assert np.isnan(wm.pair_mask_with_stability(toy[0], wm.WeakMaskParams(stability=()))[1])
    assert np.isnan(wm.weak_mask_with_stability(toy[0], wm.WeakMaskParams(method="baseline"))[1])


def test_weak_masks_with_stability_matches_stack(toy):
    image, _ = toy
    masks, stability = wm.weak_masks_with_stability(np.stack([image, image]), wm.WeakMaskParams())
    assert np.array_equal(masks, wm.weak_masks(np.stack([image, image]), wm.WeakMaskParams()))
    assert stability.shape == (2,) and stability[0] == stability[1] and 0 <= stability[0] <= 1


def test_stability_params_from_config():
    p = wm.WeakMaskParams.from_config({"stability": ["marker"], "stability_marker_scale": 1.5})
    assert p.stability == ("marker",) and p.stability_marker_scale == 1.5
    with pytest.raises(ValueError, match="stability perturbation"):
        wm.WeakMaskParams.from_config({"stability": ["jitter"]})


def test_pair_clahe_clips_must_not_be_empty():
    with pytest.raises(ValueError, match="pair_clahe_clips"):
        wm.WeakMaskParams.from_config({"pair_clahe_clips": []})
