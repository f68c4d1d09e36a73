"""A folder holding every kind of file a messy hospital archive may contain, with the outcome
each one must have: accepted (and decoded like a known reference), or rejected with a reason."""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pydicom.uid import JPEG2000Lossless

from lungssl.synthetic import make_case, write_dataset
from tests.conftest import write_png
from tests.test_loader import SECRET_ID, SECRET_NAME, save, write_dicom

REFERENCE = "formats/ref.png"
SHELL_NAME = "names/it's \"quoted\" $(touch PWNED) ;.png"  # must never reach a shell
PATIENT_SECRETS = (SECRET_NAME, SECRET_NAME.split("^")[0], SECRET_ID)


@dataclass(frozen=True)
class Expect:
    reason: str | None = None     # None: accepted; otherwise the start of the rejection reason
    like: str | None = None       # accepted, and decoded like this file (relative path) ...
    max_diff: float = 0.0         # ... within this mean absolute difference (grey levels, working size)
    min_corr: float | None = None  # ... or, for a different grey mapping (windowing), this correlation
    bit_depth: int | None = None
    fmt: str | None = None


@dataclass(frozen=True)
class HostileSet:
    root: Path                      # input.images of the workflow
    expected: dict[str, Expect]     # relative path -> outcome, for every file that must be found
    outside: Path                   # files outside root that links point to
    folder_link: str                # symlinked folder under root: not followed, but logged
    ignored: tuple[str, ...]        # files of other types: not images, not counted as found


def _png_bomb() -> bytes:
    """A valid PNG header claiming 50000 x 50000 pixels (2.5 GB) around a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 50000, 50000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _truncated(path: Path, encoded: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded[: len(encoded) // 2])


def _encode(image: np.ndarray, ext: str, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def _write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_formats(root: Path, ref: np.ndarray) -> dict[str, Expect]:
    """The reference radiograph in every stored form a site may send: each decodes like it."""
    d = root / "formats"
    d.mkdir(parents=True)
    write_png(root / REFERENCE, ref)
    write_png(d / "ref_16bit.png", ref.astype(np.uint16) * 257)
    rgba = np.dstack([ref, ref, ref, np.linspace(0, 255, ref.size).reshape(ref.shape).astype(np.uint8)])
    save(d / "ref_rgba.png", Image.fromarray(rgba, "RGBA"))
    palette = Image.fromarray(255 - ref, "L").convert("P")  # index i shows grey 255 - i
    palette.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    save(d / "ref_palette.png", palette)
    save(d / "ref_1bit.png", Image.fromarray(ref > np.median(ref)).convert("1"))
    jpeg = _encode(ref, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95)
    _write(d, "ref.jpg", jpeg)
    _write(d, "jpeg_named.png", jpeg)  # content beats the name
    save(d / "ref.bmp", ref)
    huge = cv2.resize(ref, (10000, 10000), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(d / "huge.png"), huge, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    del huge
    return {
        REFERENCE: Expect(bit_depth=8, fmt="png"),
        "formats/ref_16bit.png": Expect(like=REFERENCE, min_corr=0.99, bit_depth=16, fmt="png"),
        "formats/ref_rgba.png": Expect(like=REFERENCE, bit_depth=8, fmt="png"),
        "formats/ref_palette.png": Expect(like=REFERENCE, bit_depth=8, fmt="png"),
        "formats/ref_1bit.png": Expect(like=REFERENCE, min_corr=0.7, bit_depth=1, fmt="png"),
        "formats/ref.jpg": Expect(like=REFERENCE, max_diff=1.5, fmt="jpeg"),
        "formats/jpeg_named.png": Expect(like="formats/ref.jpg", fmt="jpeg"),
        "formats/ref.bmp": Expect(like=REFERENCE, fmt="bmp"),
        "formats/huge.png": Expect(like=REFERENCE, max_diff=2.0, fmt="png"),
    }


def write_dicoms(root: Path, ref: np.ndarray) -> dict[str, Expect]:
    """DICOM in both photometric conventions, without suffix, and broken; all carry a patient name."""
    d = root / "dicom"
    d.mkdir(parents=True)
    stored = ref.astype(np.uint16) * 16  # 12-bit detector values
    mono2 = write_dicom(d / "mono2.dcm", stored)
    write_dicom(d / "mono1.dcm", 4095 - stored, photometric="MONOCHROME1")
    (d / "IM000123").write_bytes(mono2.read_bytes())  # archives name files by number, no suffix
    write_dicom(d / "j2k.dcm", None, transfer_syntax=JPEG2000Lossless, encapsulated=b"\x00" * 64)
    write_dicom(d / "no_pixels.dcm", None)
    _truncated(d / "truncated.dcm", mono2.read_bytes())
    _write(d, "garbage.dcm", _noise(1, 4096).tobytes())
    return {
        "dicom/mono2.dcm": Expect(like=REFERENCE, min_corr=0.99, bit_depth=12, fmt="dicom"),
        "dicom/mono1.dcm": Expect(like="dicom/mono2.dcm", max_diff=0.5, bit_depth=12, fmt="dicom"),
        "dicom/IM000123": Expect(like="dicom/mono2.dcm", fmt="dicom"),
        "dicom/j2k.dcm": Expect(reason="unsupported DICOM transfer syntax 1.2.840.10008.1.2.4.90"),
        "dicom/no_pixels.dcm": Expect(reason="DICOM has no pixel data"),
        "dicom/truncated.dcm": Expect(reason="truncated or corrupt image"),
        "dicom/garbage.dcm": Expect(reason="not a decodable image (dicom)"),
    }


def write_broken(root: Path) -> dict[str, Expect]:
    d = root / "broken"
    d.mkdir(parents=True)
    (d / "empty.png").write_bytes(b"")
    noise = _noise(256, 256)
    _truncated(d / "truncated.png", _encode(noise, ".png"))
    _truncated(d / "truncated.jpg", _encode(noise, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90))
    (d / "text.png").write_text("patient list, do not share\n" * 20)
    gif = io.BytesIO()
    Image.fromarray(noise).save(gif, format="GIF")
    _write(d, "gif_named.png", gif.getvalue())
    _write(d, "._chest.png", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))  # macOS AppleDouble
    _write(d, "bomb.png", _png_bomb())
    return {
        "broken/empty.png": Expect(reason="empty file"),
        "broken/truncated.png": Expect(reason="truncated or corrupt image"),
        "broken/truncated.jpg": Expect(reason="truncated or corrupt image"),
        "broken/text.png": Expect(reason="not a decodable image (png)"),
        "broken/gif_named.png": Expect(reason="not a decodable image (png)"),
        "broken/._chest.png": Expect(reason="not a decodable image (png)"),
        "broken/bomb.png": Expect(reason="image too large (50000x50000)"),
    }


def write_sizes(root: Path) -> dict[str, Expect]:
    d = root / "bad_size"  # sorts first: with broken/ its 12 rejects fill shard 0000
    d.mkdir(parents=True)
    write_png(d / "tiny.png", _noise(16, 16))
    write_png(d / "wide.png", _noise(100, 2000))
    write_png(d / "tall.png", _noise(1600, 100))
    write_png(d / "black.png", np.zeros((256, 256), np.uint8))
    write_png(d / "white.png", np.full((256, 256), 255, np.uint8))
    return {
        "bad_size/tiny.png": Expect(reason="image too small (16x16)"),
        "bad_size/wide.png": Expect(reason="extreme aspect ratio (2000x100)"),
        "bad_size/tall.png": Expect(reason="extreme aspect ratio (100x1600)"),
        "bad_size/black.png": Expect(reason="blank image (constant value)"),
        "bad_size/white.png": Expect(reason="blank image (constant value)"),
    }


def write_names(root: Path, ref: np.ndarray) -> dict[str, Expect]:
    names = ["names/a/chest.png", "names/b/chest.png", "names/Röntgen Bild 1.png", SHELL_NAME,
             "names/new\nline.png", "names/..png"]
    for rel in names:
        write_png(root / rel, ref)
    return {rel: Expect(like=REFERENCE, fmt="png") for rel in names}


def write_links(root: Path, outside: Path, ref: np.ndarray) -> dict[str, Expect]:
    d = root / "links"
    d.mkdir(parents=True)
    write_png(outside / "elsewhere.png", ref)
    write_png(outside / "folder" / "hidden_behind_link.png", ref)
    (d / "outside.png").symlink_to(outside / "elsewhere.png")
    (d / "dangling.png").symlink_to(outside / "gone.png")
    (d / "loop.png").symlink_to(d / "loop.png")
    (d / "folder").symlink_to(outside / "folder", target_is_directory=True)
    os.mkfifo(d / "pipe.png")  # reading it would block forever
    return {
        "links/outside.png": Expect(like=REFERENCE, fmt="png"),
        "links/dangling.png": Expect(reason="cannot read file (No such file or directory)"),
        "links/loop.png": Expect(reason="cannot read file (Too many levels of symbolic links)"),
        "links/pipe.png": Expect(reason="not a regular file"),
    }


def write_masks(root: Path, ref: np.ndarray) -> dict[str, Expect]:
    """Images with ground truth (preset images_masks: ../masks/<stem>.png) that cannot be used."""
    write_png(root / "gt" / "wrong_size_mask.png", ref)
    write_png(root.parent / "masks" / "wrong_size_mask.png", np.zeros((100, 90), np.uint8))
    write_png(root / "gt" / "corrupt_mask.png", ref)
    _truncated(root.parent / "masks" / "corrupt_mask.png", _encode(_noise(64, 64), ".png"))
    return {"gt/wrong_size_mask.png": Expect(like=REFERENCE, fmt="png"),
            "gt/corrupt_mask.png": Expect(like=REFERENCE, fmt="png")}


def build_hostile_set(base: Path, n_good: int = 30) -> HostileSet:
    """Good synthetic radiographs (with true masks) plus every hostile file, under base/data/images."""
    data = base / "in put 'Röntgen' {x} $HOME"  # the root itself: spaces, quotes, braces, non-ASCII
    write_dataset(data, n=n_good, seed=3, min_size=256, max_size=320)
    root = data / "images"
    ref = make_case(np.random.default_rng(7), height=320, width=288).image
    expected = {p.name: Expect(fmt="png") for p in sorted(root.glob("*.png"))}
    expected |= write_formats(root, ref)
    expected |= write_dicoms(root, ref)
    expected |= write_broken(root)
    expected |= write_sizes(root)
    expected |= write_names(root, ref)
    expected |= write_links(root, base / "outside", ref)
    expected |= write_masks(root, ref)
    ignored = ("notes.txt", "Thumbs.db")
    for name in ignored:
        (root / name).write_text("not an image")
    return HostileSet(root=root, expected=expected, outside=base / "outside", folder_link="links/folder",
                      ignored=ignored)
