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
