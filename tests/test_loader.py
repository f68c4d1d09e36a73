"""Tests for lungssl.loader; every fixture is generated in tmp_path."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, ExplicitVRLittleEndian, generate_uid

from lungssl.loader import (
    SUPPORTED_SUFFIXES,
    GrayImage,
    ImageReadError,
    file_digest,
    is_supported,
    read_image,
    read_mask,
)

SECRET_NAME = "Secretname^Patricia"
SECRET_ID = "PID-0042-XYZ"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


# --- fixture builders -------------------------------------------------------------------


def gradient(h: int = 64, w: int = 64, top: int = 255, dtype: type = np.uint8) -> np.ndarray:
    """Rows run from 0 to `top`, so every row is constant and the columns are monotonic."""
    column = np.linspace(0, top, h).round().astype(dtype)
    return np.repeat(column[:, None], w, axis=1)


def save(path: Path, image: Image.Image | np.ndarray, **kwargs) -> Path:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, **kwargs)
    return path


def write_dicom(
    path: Path,
    stored: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    transfer_syntax: str = ExplicitVRLittleEndian,
    encapsulated: bytes | None = None,
    frames: int = 1,
    **elements,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.Modality = "DX"
    shape = stored.shape[-2:] if stored is not None else (64, 64)
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if stored is not None and stored.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if encapsulated is not None:
        ds.PixelData = encapsulate([encapsulated])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    elif stored is not None:
        ds.PixelData = stored.astype("<u2" if ds.BitsAllocated == 16 else np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def rejection(path: Path, **kwargs) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)
    return str(info.value)


# --- raster formats ---------------------------------------------------------------------


def test_8bit_png_values_unchanged(tmp_path):
    pixels = gradient(64, 80, top=200)
    pixels[10:20, 10:20] = 17
    img = read_image(save(tmp_path / "a.png", pixels))
    assert isinstance(img, GrayImage)
    assert img.pixels.dtype == np.uint8 and img.pixels.shape == (64, 80)
    np.testing.assert_array_equal(img.pixels, pixels)
    assert (img.bit_depth, img.fmt) == (8, "png")


def test_16bit_png_12bit_content_stretched_to_full_range_monotonic(tmp_path):
    stored = gradient(128, 64, top=4095, dtype=np.uint16)
    img = read_image(save(tmp_path / "a.png", stored))
    assert img.bit_depth == 16 and img.pixels.dtype == np.uint8
    assert img.pixels.min() == 0 and img.pixels.max() == 255
    column = img.pixels[:, 0].astype(int)
    assert np.all(np.diff(column) >= 0)


def test_16bit_window_ignores_a_few_hot_pixels(tmp_path):
    stored = gradient(128, 128, top=2000, dtype=np.uint16) + 1000
    stored[0, :5] = 65535  # burned-in marker / hot pixels
    img = read_image(save(tmp_path / "hot.png", stored))
    body = img.pixels[1:]
    assert body.max() >= 250  # not squashed into the bottom of the range by the outliers
    assert img.pixels[0, 0] == 255  # outliers clip


def test_rgb_png_to_gray(tmp_path):
    gray = gradient(64, 64)
    rgb = np.stack([gray, gray, gray], axis=-1)
    rgb[:8, :8] = (255, 0, 0)
    img = read_image(save(tmp_path / "rgb.png", rgb))
    np.testing.assert_array_equal(img.pixels[8:], gray[8:])
    assert img.pixels[0, 0] == 76  # ITU-R 601 luma of pure red
    assert (img.bit_depth, img.fmt) == (8, "png")


def test_rgba_png_alpha_dropped(tmp_path):
    gray = gradient(64, 64)
    alpha = np.zeros_like(gray)
    alpha[:, 32:] = 255
    rgba = np.stack([gray, gray, gray, alpha], axis=-1)
    img = read_image(save(tmp_path / "rgba.png", rgba))
    np.testing.assert_array_equal(img.pixels, gray)


def test_palette_png_uses_palette(tmp_path):
    indices = gradient(64, 64, top=255)
    palette = []
    for i in range(256):
        palette += [255 - i] * 3  # inverted gray palette
    image = Image.fromarray(indices, mode="L").convert("P")
    image.putdata(indices.ravel())
    image.putpalette(palette)
    img = read_image(save(tmp_path / "pal.png", image))
    np.testing.assert_array_equal(img.pixels, 255 - indices)


def test_1bit_png_to_0_255(tmp_path):
    bits = np.zeros((64, 64), dtype=bool)
    bits[:, 20:40] = True
    img = read_image(save(tmp_path / "bw.png", Image.fromarray(bits)))
    assert set(np.unique(img.pixels)) == {0, 255}
    assert img.pixels[0, 30] == 255 and img.pixels[0, 0] == 0
    assert img.bit_depth == 1


def test_jpeg(tmp_path):
    pixels = gradient(64, 64)
    img = read_image(save(tmp_path / "a.jpg", pixels, quality=95))
    assert img.fmt == "jpeg" and img.bit_depth == 8
    assert np.abs(img.pixels.astype(int) - pixels).max() <= 4


def test_tiff_8bit(tmp_path):
    pixels = gradient(64, 64, top=180)
    img = read_image(save(tmp_path / "a.tif", pixels))
    np.testing.assert_array_equal(img.pixels, pixels)
    assert (img.bit_depth, img.fmt) == (8, "tiff")


def test_tiff_16bit(tmp_path):
    stored = gradient(64, 64, top=60000, dtype=np.uint16)
    img = read_image(save(tmp_path / "a.tiff", stored))
    assert (img.bit_depth, img.fmt) == (16, "tiff")
    assert img.pixels.min() == 0 and img.pixels.max() == 255
    assert np.all(np.diff(img.pixels[:, 0].astype(int)) >= 0)


def test_multipage_tiff_uses_first_page(tmp_path):
    first, second = gradient(64, 64), np.full((64, 64), 99, np.uint8)
    path = tmp_path / "pages.tif"
    Image.fromarray(first).save(path, save_all=True, append_images=[Image.fromarray(second)])
    np.testing.assert_array_equal(read_image(path).pixels, first)


def test_bmp(tmp_path):
    pixels = gradient(64, 64)
    img = read_image(save(tmp_path / "a.BMP", pixels))
    np.testing.assert_array_equal(img.pixels, pixels)
    assert img.fmt == "bmp"


def test_jpeg_exif_orientation_applied(tmp_path):
    image = Image.fromarray(gradient(64, 96))
    exif = image.getexif()
    exif[0x0112] = 6  # display rotated by 90 degrees
    img = read_image(save(tmp_path / "phone.jpg", image, exif=exif.tobytes()))
    assert img.pixels.shape == (96, 64)


def test_content_wins_over_suffix(tmp_path):
    img = read_image(save(tmp_path / "really_a_jpeg.png", gradient(), format="JPEG"))
    assert img.fmt == "jpeg"


# --- DICOM ------------------------------------------------------------------------------


def test_dicom_monochrome2_rescale_and_window(tmp_path):
    stored = gradient(128, 64, top=4095, dtype=np.uint16)
    # modality value = 2 * stored - 1000; window [2000, 4000] <=> stored [1500, 2500]
    path = write_dicom(
        tmp_path / "mono2.dcm", stored,
        RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=3000, WindowWidth=2000,
    )
    img = read_image(path)
    assert (img.bit_depth, img.fmt) == (12, "dicom")
    out, raw = img.pixels[:, 0].astype(int), stored[:, 0].astype(int)
    assert np.all(out[raw <= 1499] == 0)  # below the window saturates black
    assert np.all(out[raw >= 2501] == 255)  # above the window saturates white
    inside = (raw > 1550) & (raw < 2450)
    assert np.all((out[inside] > 0) & (out[inside] < 255))
    assert np.all(np.diff(out) >= 0)
    middle = np.argmin(np.abs(raw - 2000))
    assert abs(out[middle] - 127) <= 3


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = gradient(64, 64, top=3000, dtype=np.uint16)
    stored[20:36, 20:36] = 4095
    img = read_image(write_dicom(tmp_path / "mono1.dcm", stored, photometric="MONOCHROME1"))
    assert img.pixels[25, 25] == img.pixels.min() == 0
    assert img.pixels[0, 0] == 255  # lowest stored value is brightest


def test_dicom_multiframe_uses_first_frame(tmp_path):
    frames = np.stack([gradient(64, 64, top=4095, dtype=np.uint16), np.full((64, 64), 7, np.uint16)])
    img = read_image(write_dicom(tmp_path / "multi.dcm", frames, frames=2))
    assert img.pixels.shape == (64, 64)
    assert img.pixels.min() == 0 and img.pixels.max() == 255


def test_dicom_8bit_identity_rescale_unchanged(tmp_path):
    pixels = gradient(64, 64, top=200)
    path = write_dicom(tmp_path / "8bit.dcm", pixels, bits_stored=8, RescaleSlope=1, RescaleIntercept=0)
    img = read_image(path)
    np.testing.assert_array_equal(img.pixels, pixels)
    assert img.bit_depth == 8


def test_dicom_jpeg2000_fake_data_rejected(tmp_path):
    path = write_dicom(
        tmp_path / "j2k.dcm", None, transfer_syntax=JPEG2000Lossless, encapsulated=b"\x00" * 64
    )
    assert rejection(path).startswith(f"unsupported DICOM transfer syntax {JPEG2000Lossless}")


def test_dicom_without_decoder_rejected_as_unsupported(tmp_path):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless plugin is installed here")
    path = write_dicom(tmp_path / "jll.dcm", None, transfer_syntax=JPEGLosslessSV1, encapsulated=b"\x00" * 64)
    assert rejection(path) == f"unsupported DICOM transfer syntax {JPEGLosslessSV1}"


def test_dicom_without_pixel_data_rejected(tmp_path):
    assert rejection(write_dicom(tmp_path / "nopix.dcm", None)) == "DICOM has no pixel data"


def test_dicom_errors_and_logs_keep_patient_data_out(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    good = write_dicom(tmp_path / "good.dcm", gradient(64, 64, top=4095, dtype=np.uint16))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    bad = [
        write_dicom(tmp_path / "nopix.dcm", None),
        write_dicom(tmp_path / "j2k.dcm", None, transfer_syntax=JPEG2000Lossless, encapsulated=b"\x01" * 32),
        truncated,
    ]
    messages = [rejection(path) for path in bad]
    assert messages[2] == "truncated or corrupt image"
    for text in [*messages, caplog.text]:
        assert SECRET_NAME not in text and "Secretname" not in text and SECRET_ID not in text


def test_suffixless_dicom_is_supported_and_loads(tmp_path):
    path = tmp_path / "IM000001"
    write_dicom(path, gradient(64, 64, top=4095, dtype=np.uint16))
    assert is_supported(path)
    assert read_image(path).fmt == "dicom"
    uid_named = tmp_path / "1.2.826.0.1.3680043.8.498.7"  # suffix ".7"
    uid_named.write_bytes(path.read_bytes())
    assert is_supported(uid_named) and read_image(uid_named).fmt == "dicom"


def test_preambleless_legacy_dicom_loads(tmp_path):
    ds = Dataset()
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = gradient(64, 64, top=4095, dtype=np.uint16).astype("<u2").tobytes()
    path = tmp_path / "legacy.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True)  # no preamble, no file meta
    img = read_image(path)
    assert img.fmt == "dicom" and img.pixels[0, 0] == 0 and img.pixels[-1, 0] == 255


def test_suffix_support(tmp_path):
    assert SUPPORTED_SUFFIXES == {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
    assert is_supported(Path("x/IMAGE.PNG")) and is_supported(Path("a.Dicom"))
    plain = tmp_path / "README"
    plain.write_text("not an image " * 20)
    assert not is_supported(plain) and not is_supported(tmp_path / "a.gif")
    assert not is_supported(tmp_path)


# --- rejections -------------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert rejection(path) == "empty file"


@pytest.mark.parametrize("name, kwargs", [("half.png", {}), ("half.jpg", {"quality": 90})])
def test_truncated_files_rejected(tmp_path, name, kwargs):
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (256, 256), dtype=np.uint8)  # incompressible: half is really half
    full = save(tmp_path / f"full_{name}", noisy, **kwargs).read_bytes()
    path = tmp_path / name
    path.write_bytes(full[: len(full) // 2])
    assert rejection(path) == "truncated or corrupt image"


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("patient list, do not share\n" * 10)
    assert rejection(path) == "not a decodable image (png)"


def test_unsupported_suffix(tmp_path):
    path = save(tmp_path / "a.gif", gradient())
    assert rejection(path) == "unsupported file type"


def test_missing_file(tmp_path):
    assert rejection(tmp_path / "gone.png").startswith("cannot read file")


def test_too_small(tmp_path):
    assert rejection(save(tmp_path / "tiny.png", gradient(16, 16))) == "image too small (16x16)"


def test_extreme_aspect(tmp_path):
    path = save(tmp_path / "strip.png", gradient(100, 2000))
    assert rejection(path) == "extreme aspect ratio (2000x100)"
    assert read_image(path, max_aspect=25.0).pixels.shape == (100, 2000)


@pytest.mark.parametrize("value", [0, 255])
def test_blank_images_rejected(tmp_path, value):
    path = save(tmp_path / f"blank{value}.png", np.full((64, 64), value, np.uint8))
    assert rejection(path) == "blank image (constant value)"


# --- paths and large files --------------------------------------------------------------


def test_huge_image_loads_quickly(tmp_path):
    image = Image.new("L", (10000, 10000), 40)
    image.paste(Image.fromarray(gradient(256, 256)), (5000, 5000))
    path = save(tmp_path / "huge.png", image, compress_level=1)
    del image
    start = time.perf_counter()
    img = read_image(path)
    elapsed = time.perf_counter() - start
    assert img.pixels.shape == (10000, 10000)
    assert img.pixels[5100, 5100] == gradient(256, 256)[100, 100] and img.pixels[0, 0] == 40
    assert elapsed < 10, f"10000x10000 PNG took {elapsed:.1f} s"


def test_spaces_and_non_ascii_names(tmp_path):
    folder = tmp_path / "Röntgen Archiv"
    folder.mkdir()
    pixels = gradient()
    path = save(folder / "größe bild 1.png", pixels)
    np.testing.assert_array_equal(read_image(path).pixels, pixels)


def test_symlink_to_png(tmp_path):
    target = save(tmp_path / "target.png", gradient())
    link = tmp_path / "link.png"
    try:
        link.symlink_to(target)
    except OSError:
        pytest.skip("symlinks not permitted here")
    np.testing.assert_array_equal(read_image(link).pixels, gradient())


# --- masks and digests ------------------------------------------------------------------


def test_read_mask_union(tmp_path):
    left = np.zeros((64, 64), np.uint8)
    left[10:50, 5:25] = 255
    right = np.zeros((64, 64), np.uint8)
    right[10:50, 40:60] = 200
    right[0, 0] = 100  # gray below the threshold is background
    mask = read_mask([save(tmp_path / "left.png", left), save(tmp_path / "right.png", right)])
    assert mask.dtype == bool and mask.shape == (64, 64)
    np.testing.assert_array_equal(mask, (left > 127) | (right > 127))


def test_read_mask_single_and_zero_one_masks(tmp_path):
    labels = np.zeros((64, 64), np.uint8)
    labels[20:40, 20:40] = 1
    np.testing.assert_array_equal(read_mask([save(tmp_path / "m.png", labels)]), labels == 1)


def test_read_mask_size_mismatch(tmp_path):
    a = save(tmp_path / "a.png", np.zeros((64, 64), np.uint8))
    b = save(tmp_path / "b.png", np.zeros((64, 32), np.uint8))
    with pytest.raises(ImageReadError, match="mask files differ in size"):
        read_mask([a, b])


def test_file_digest(tmp_path):
    a, b, c = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.bin"
    payload = bytes(range(256)) * 10000
    a.write_bytes(payload)
    b.write_bytes(payload)
    c.write_bytes(payload[:-1] + b"\x00")
    assert file_digest(a) == file_digest(b)
    assert file_digest(a) != file_digest(c)
    assert len(file_digest(a)) == 64
