"""The one image loader of lungssl: every stage reads chest X-rays and masks through here.

Inputs come from messy hospital archives, so anything that cannot be used raises
``ImageReadError`` with a short, one-line reason that ends up in the rejected table.
Reasons never quote DICOM header values other than the transfer syntax UID and the
photometric interpretation, so that the table and logs stay free of patient data.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

try:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
except ImportError:  # pydicom < 3 keeps the LUT helpers here and has no decoder registry
    from pydicom.pixel_data_handlers.util import apply_color_lut, apply_modality_lut, apply_voi_lut

    get_decoder = None

# Radiographs are legitimately huge (10000x10000 and more); Pillow's decompression-bomb
# guard would reject them. Inputs come from the site's own archive, not from the web.
Image.MAX_IMAGE_PIXELS = None

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
)
_SUFFIX_FORMATS = {
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
    ".bmp": "bmp", ".dcm": "dicom", ".dicom": "dicom",
}
# Pillow is only allowed the formats we support: a file of another type under a
# supported name (EPS would even start Ghostscript) is rejected instead of decoded.
_PILLOW_OPENERS = ("PNG", "JPEG", "TIFF", "BMP")
# Pillow reports JPEGs with multi-picture markers (common from cameras) as MPO.
_PILLOW_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff", "BMP": "bmp"}
_MODE_BITS = {"1": 1, "I": 32, "F": 32}
_DICM_OFFSET = 128
_PERCENTILES = (0.1, 99.9)
# Percentiles of more pixels than this are taken on a regular subsample: exact enough
# for a display window, and it keeps 100-megapixel images fast.
_MAX_WINDOW_SAMPLES = 1 << 24
# A header may claim any size; beyond this many pixels (32768 x 32768, ten times the largest
# detector) an image is rejected before a single pixel is allocated.
MAX_PIXELS = 1 << 30


class ImageReadError(ValueError):
    """An input file that cannot be used; str(err) is a short human reason, recorded in the rejected table."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing/hashing ndarray fields is meaningless
class GrayImage:
    pixels: np.ndarray  # uint8, HxW, 0 = black
    bit_depth: int  # bits per sample of the stored file (1, 8, 16, ... ; DICOM: BitsStored)
    fmt: str  # "png" | "jpeg" | "tiff" | "bmp" | "dicom"


def is_supported(path: Path) -> bool:
    """True for a supported suffix, or for any other file that carries the DICOM magic.

    DICOM archives often hold files without a suffix or named by UID ("1.2.840...45.7"),
    so files with an unknown suffix are recognised by content.
    """
    path = Path(path)
    if path.suffix.lower() in SUPPORTED_SUFFIXES:
        return True
    return _file_has_dicom_magic(path)


def read_image(path: Path, min_side: int = 32, max_aspect: float = 4.0) -> GrayImage:
    """Load any supported image as 8-bit gray, or raise ImageReadError with the reason."""
    path = Path(path)
    fmt = _expected_format(path)
    pixels, bit_depth, fmt = _decode(_read_bytes(path), fmt)
    _validate(pixels, min_side, max_aspect)
    return GrayImage(pixels=pixels, bit_depth=bit_depth, fmt=fmt)


def read_mask(paths: Sequence[Path]) -> np.ndarray:
    """Union of one or more mask files (e.g. left and right lung) as a bool HxW array."""
    if not paths:
        raise ValueError("read_mask needs at least one mask file")
    union: np.ndarray | None = None
    for path in paths:
        path = Path(path)
        gray, _, _ = _decode(_read_bytes(path), _expected_format(path))
        if union is not None and union.shape != gray.shape:
            raise ImageReadError("mask files differ in size")
        union = _binarise(gray) if union is None else union | _binarise(gray)
    return union


def file_digest(path: Path) -> str:
    """sha256 hex digest of the file bytes, streamed so large files are not held in memory."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# --- format detection -------------------------------------------------------------------


def _file_has_dicom_magic(path: Path) -> bool:
    try:  # directories, broken links, pipes and unreadable files are simply "not DICOM"
        if not _is_regular(path):
            return False  # opening a FIFO or a device would block or read forever
        with path.open("rb") as handle:
            return _has_dicom_magic(handle.read(_DICM_OFFSET + 4))
    except OSError:
        return False


def _is_regular(path: Path) -> bool:
    """True for a regular file (after following symlinks); raises OSError for a broken link."""
    return stat.S_ISREG(os.stat(path).st_mode)


def _has_dicom_magic(data: bytes) -> bool:
    return data[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM"


def _expected_format(path: Path) -> str:
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None and _file_has_dicom_magic(path):
        fmt = "dicom"
    if fmt is None:
        raise ImageReadError("unsupported file type")
    return fmt


def _read_bytes(path: Path) -> bytes:
    # read_bytes rather than cv2.imread: spaces and non-ASCII names work everywhere.
    try:
        if not _is_regular(path):  # a named pipe would block the job forever, a device never end
            raise ImageReadError("not a regular file")
        data = path.read_bytes()
    except OSError as err:
        raise ImageReadError(f"cannot read file ({err.strerror or type(err).__name__})") from None
    if not data:
        raise ImageReadError("empty file")
    return data


def _decode(data: bytes, fmt: str) -> tuple[np.ndarray, int, str]:
    """Decode to uint8 gray; returns (pixels, stored bit depth, actual format)."""
    # Content beats the name: DICOM exported as "x.png" happens in real archives.
    if fmt == "dicom" or _has_dicom_magic(data):
        gray, bit_depth = _decode_dicom(data, has_magic=_has_dicom_magic(data))
        return gray, bit_depth, "dicom"
    return _decode_raster(data, fmt)


# --- raster formats ---------------------------------------------------------------------


def _decode_raster(data: bytes, expected_fmt: str) -> tuple[np.ndarray, int, str]:
    try:
        img = Image.open(io.BytesIO(data), formats=_PILLOW_OPENERS)
    except Exception:  # Pillow signals "not an image" with several exception types
        raise ImageReadError(f"not a decodable image ({expected_fmt})") from None
    _check_pixel_count(*img.size)  # from the header alone: nothing allocated yet
    try:
        # load() inside the try: open() only parses the header, truncation shows up here
        # (as long as ImageFile.LOAD_TRUNCATED_IMAGES stays False, Pillow's default).
        img.load()
    except MemoryError:
        raise
    except Exception:  # decoders raise OSError, SyntaxError, ValueError, EOFError, ...
        raise ImageReadError("truncated or corrupt image") from None
    fmt = _PILLOW_FORMATS.get(img.format, expected_fmt)
    return _to_uint8(_pil_to_gray(_upright(img))), _raster_bit_depth(img, data), fmt


def _raster_bit_depth(img: Image.Image, data: bytes) -> int:
    if img.format == "PNG":
        return data[24]  # IHDR bit depth; Pillow's mode hides 1/2/4-bit palettes and 16-bit RGB
    if img.format == "TIFF":
        bits = img.tag_v2.get(258)  # BitsPerSample, one value per sample
        if bits:
            return int(bits[0]) if isinstance(bits, tuple) else int(bits)
    if img.mode.startswith("I;16"):
        return 16
    return _MODE_BITS.get(img.mode, 8)


def _upright(img: Image.Image) -> Image.Image:
    # Photographed or phone-exported films carry an EXIF rotation; a broken EXIF block
    # should not cost an otherwise good image.
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of huge images
    except Exception:
        pass
    return img


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    """Gray array in the image's own value range (uint8, or wider for 16-bit/int/float)."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F", "L"):
        return np.asarray(img)
    if img.mode == "1":
        return np.asarray(img.convert("L"))  # 0/255
    # P, LA, PA, RGB, RGBA, CMYK, YCbCr, ...: via RGB so palettes apply and alpha is dropped
    return np.asarray(img.convert("RGB").convert("L"))


# --- DICOM ------------------------------------------------------------------------------


def _decode_dicom(data: bytes, has_magic: bool) -> tuple[np.ndarray, int]:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # pydicom warnings may quote header values (names, ids): keep them out of the logs.
        warnings.simplefilter("ignore")
        ds = _read_dataset(data, has_magic)
        _check_pixel_count(*_dicom_size(ds))
        raw = _first_frame(ds, _transfer_syntax(ds))
        gray = _dicom_to_gray(raw, ds)
    return gray, int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)


def _dicom_size(ds: pydicom.Dataset) -> tuple[int, int]:
    try:
        return int(ds.get("Columns") or 0), int(ds.get("Rows") or 0)
    except (TypeError, ValueError):  # a malformed size: pixel decoding will say what is wrong
        return 0, 0


def _read_dataset(data: bytes, has_magic: bool) -> pydicom.Dataset:
    # Without the magic the file is either a legacy preamble-less DICOM or not DICOM at all.
    not_dicom = ImageReadError("not a decodable image (dicom)")
    try:
        # force=True reads preamble-less legacy files; callers only get here for a DICOM
        # suffix or the DICM magic, so arbitrary files are never parsed as DICOM.
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except MemoryError:
        raise
    except Exception:  # `from None`: pydicom's messages may contain header values
        raise (ImageReadError("truncated or corrupt image") if has_magic else not_dicom) from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError("DICOM has no pixel data") if has_magic else not_dicom
    return ds


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        # Preamble-less files have no file meta; pydicom still knows how it parsed them,
        # and it needs the syntax to decode the pixels.
        implicit, little = getattr(ds, "original_encoding", (True, True))
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return UID(str(meta.TransferSyntaxUID))


def _first_frame(ds: pydicom.Dataset, uid: UID) -> np.ndarray:
    unsupported = f"unsupported DICOM transfer syntax {str(uid)[:64]}"
    if not uid.is_transfer_syntax or (uid.is_compressed and not _decoder_available(uid)):
        raise ImageReadError(unsupported)
    try:
        if hasattr(ds, "pixel_array_options"):  # pydicom >= 3 decodes only the frame we use
            ds.pixel_array_options(index=0)
            return ds.pixel_array
        frames = int(ds.get("NumberOfFrames") or 1)
        return ds.pixel_array[0] if frames > 1 else ds.pixel_array
    except MemoryError:
        raise
    except Exception:  # any decoder failure means this file cannot be used
        # A decoder exists but failed: a variant it cannot handle, or damaged data.
        reason = f"{unsupported} or corrupt pixel data" if uid.is_compressed else "truncated or corrupt image"
        raise ImageReadError(reason) from None


def _decoder_available(uid: UID) -> bool:
    if get_decoder is None:  # pydicom < 3: no registry to ask, decoding will tell
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def _dicom_to_gray(raw: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        return _to_uint8(_rgb_to_gray(apply_color_lut(raw, ds)))
    if raw.ndim == 3:  # RGB, and YBR which pydicom >= 3 already converts to RGB
        return _to_uint8(_rgb_to_gray(raw[..., :3]))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(f"unsupported DICOM photometric interpretation {photometric[:32]}")
    values, display_range = _apply_dicom_luts(raw, ds)
    gray = _to_uint8(values, display_range)
    # MONOCHROME1 stores air as the highest value; invert so that air is black as usual.
    return 255 - gray if photometric == "MONOCHROME1" else gray


def _apply_dicom_luts(raw: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Modality LUT then VOI LUT/window; also returns the range to map to 0..255 (None: data-driven)."""
    try:
        values = apply_modality_lut(raw, ds)
        if values.dtype != raw.dtype and np.array_equal(values, raw):
            values = raw  # identity rescale: keep 8-bit data 8-bit (no stretching)
        if ds.get("VOILUTSequence"):
            voi = apply_voi_lut(values, ds)
            return voi, (float(voi.min()), float(voi.max()))
        if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            # pydicom maps the window onto a fixed output range; probing with extreme
            # values reads that range back, so the window edges become 0 and 255.
            lo, hi = apply_voi_lut(np.array([-1e30, 1e30]), ds)
            return apply_voi_lut(values, ds), (float(lo), float(hi))
        return values, None
    except Exception:
        # A malformed display hint (bad slope, zero window width, odd LUT) should not cost
        # the image: fall back to the stored values with a data-driven window.
        return raw, None


# --- pixel conversion -------------------------------------------------------------------


def _rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    # ITU-R 601 luma, the weights Pillow's convert("L") uses for raster files.
    gray = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.rint(gray).astype(np.uint8) if rgb.dtype == np.uint8 else gray


def _to_uint8(values: np.ndarray, display_range: tuple[float, float] | None = None) -> np.ndarray:
    """8-bit data unchanged; anything else linearly windowed to 0..255 and clipped."""
    if display_range is None and values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    lo, hi = display_range if display_range is not None else _robust_range(values)
    if not hi > lo:  # constant image; _validate rejects it as blank
        return np.zeros(values.shape, dtype=np.uint8)
    if values.dtype in (np.uint8, np.uint16):
        # One table lookup per pixel instead of several float passes over 100+ megapixels.
        table = _window(np.arange(np.iinfo(values.dtype).max + 1, dtype=np.float32), lo, hi)
        return table[values]
    return _window(values.astype(np.float32), lo, hi)


def _window(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map lo..hi -> 0..255, clipped; works in place on the float32 `values`."""
    values -= np.float32(lo)
    values *= np.float32(255.0 / (hi - lo))
    np.nan_to_num(values, copy=False, nan=0.0)
    np.clip(values, 0, 255, out=values)
    return np.rint(values, out=values).astype(np.uint8)


def _robust_range(values: np.ndarray) -> tuple[float, float]:
    """0.1..99.9th percentile: hot pixels and burned-in markers do not squash the contrast."""
    step = max(1, int(np.ceil(np.sqrt(values.size / _MAX_WINDOW_SAMPLES))))
    sample = values[::step, ::step]
    sample = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    if sample.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(sample, _PERCENTILES)
    if not hi > lo:  # nearly constant: fall back to the full range to keep small details
        lo, hi = sample.min(), sample.max()
    return float(lo), float(hi)


def _binarise(gray: np.ndarray) -> np.ndarray:
    # 0/1 label masks are common and would vanish entirely under "> 127".
    return gray > 0 if gray.max() == 1 else gray > 127


def _check_pixel_count(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageReadError(f"image too large ({width}x{height})")


def _validate(pixels: np.ndarray, min_side: int, max_aspect: float) -> None:
    h, w = pixels.shape
    if min(w, h) < min_side:
        raise ImageReadError(f"image too small ({w}x{h})")
    if max(w, h) / min(w, h) > max_aspect:
        raise ImageReadError(f"extreme aspect ratio ({w}x{h})")
    if pixels.min() == pixels.max():
        raise ImageReadError("blank image (constant value)")
