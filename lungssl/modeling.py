"""The segmentation model: building it, normalising its input, saving and loading it safely.

A saved model carries everything needed to use it (architecture, encoder, input size,
normalisation), so `lungssl predict --model FILE` works on its own.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lungssl import __version__
from lungssl.storage import atomic_path
from lungssl.weak_masks import find_film

log = logging.getLogger("lungssl.modeling")

MODEL_FORMAT = "lungssl-model/1"
# Described in each model file for readers of it; the spec's input_norm is what loading uses.
NORMALISATION_NAMES = {"zscore": "per_image_zscore", "rank": "film_pixel_rank"}
INPUT_NORMS = tuple(NORMALISATION_NAMES)


@dataclass(frozen=True)
class ModelSpec:
    arch: str = "Unet"
    encoder: str = "resnet34"
    size: int = 256
    encoder_weights_path: str | None = None  # local file only: nothing is ever downloaded
    # Models saved before this field existed were trained on z-scored input, hence its default.
    input_norm: str = "zscore"

    def __post_init__(self):
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {self.input_norm!r}: use one of {', '.join(INPUT_NORMS)}")

    @classmethod
    def from_config(cls, cfg: dict, size: int) -> "ModelSpec":
        return cls(arch=cfg.get("arch", "Unet"), encoder=cfg.get("encoder", "resnet34"), size=size,
                   encoder_weights_path=cfg.get("encoder_weights_path"),
                   input_norm=cfg.get("input_norm", "zscore"))


DEVICES = "auto, cpu, cuda or cuda:N"


def pick_device(requested: str = "auto") -> torch.device:
    """auto: the GPU when PyTorch sees one, else the CPU; cpu; cuda (or cuda:N): a GPU or a clear error.

    `lungssl predict --device` and, in the workflow, `train.device` (handed to `lungssl train` and
    `lungssl predict-shard` as --device) choose it."""
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested != "cuda" and not (requested.startswith("cuda:") and requested[5:].isdigit()):
        raise ValueError(f"unknown device {requested!r}: use {DEVICES}")
    if not torch.cuda.is_available():
        why = ("this PyTorch build has no CUDA support (a CPU-only install)" if torch.version.cuda is None
               else "PyTorch sees no usable NVIDIA GPU here (none on this node, no driver, or "
               "CUDA_VISIBLE_DEVICES hides it)")
        raise ValueError(f"a GPU was asked for (device {requested}) but {why}; run on a GPU node, or use "
                         "--device cpu / auto (in the workflow: train.device: cpu or auto)")
    index = int(requested[5:]) if ":" in requested else 0
    if index >= torch.cuda.device_count():
        raise ValueError(f"a GPU was asked for (device {requested}) but only {torch.cuda.device_count()} "
                         f"GPU(s) are visible: use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return torch.device(requested)


def normalise(image: np.ndarray, method: str = "zscore") -> np.ndarray:
    """The model's input from a grey uint8 image (float32, about zero mean and unit variance).

    zscore: removes linear exposure and contrast differences between devices. rank: each film
    pixel's rank, which any increasing grey-level curve (another device's gamma, window or log)
    leaves unchanged."""
    return film_rank(image) if method == "rank" else zscore(image)


def zscore(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float32)
    return (x - x.mean()) / max(float(x.std()), 1.0)


def film_rank(image: np.ndarray) -> np.ndarray:
    """Each pixel's mid-rank among the film's pixels, scaled like a z-score; padding at the minimum.

    Ranked over the whole frame, a lung pixel's rank would depend on how much black padding frames
    the film (a fifth of the frame on one hospital's films, none on another's), a difference
    between sites larger than their grey-level curves; so padding is cut first, as the weak masks do."""
    top, bottom, left, right = find_film(image)
    film = image[top:bottom, left:right]
    _, where, counts = np.unique(film, return_inverse=True, return_counts=True)
    cdf = (np.cumsum(counts) - counts / 2) / film.size
    x = np.zeros(image.shape, np.float32)
    x[top:bottom, left:right] = cdf[where.reshape(film.shape)]
    return (x - 0.5) / np.float32(np.sqrt(1 / 12))  # the uniform distribution's mean and sd


def build_model(spec: ModelSpec) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    try:
        model = smp.create_model(spec.arch, encoder_name=spec.encoder, encoder_weights=None,
                                 in_channels=1, classes=1, activation=None)
    except (KeyError, ValueError) as err:
        raise ValueError(f"cannot build model {spec.arch}/{spec.encoder}: {err}") from None
    if spec.encoder_weights_path:
        load_encoder_weights(model, Path(spec.encoder_weights_path))
    return model


def load_encoder_weights(model: torch.nn.Module, path: Path) -> None:
    """Load an (ImageNet) encoder checkpoint from a local file, folding RGB filters into one channel."""
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    try:
        state = _read_weights(path)
    except Exception as err:  # weights_only refuses pickled code: a clear error, nothing executed
        raise ValueError(f"{path} is not a readable weights file ({type(err).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.encoder.state_dict()
    adapted = {}
    for name, value in state.items():
        name = name.removeprefix("encoder.").removeprefix("module.")
        if name not in own:
            continue
        if value.ndim == 4 and own[name].shape[1] == 1 and value.shape[1] == 3:
            value = value.sum(dim=1, keepdim=True)  # a gray image is R = G = B
        if value.shape == own[name].shape:
            adapted[name] = value
    if len(adapted) < 0.5 * len(own):
        raise ValueError(f"{path} matches only {len(adapted)} of {len(own)} encoder tensors: wrong encoder?")
    model.encoder.load_state_dict(adapted, strict=False)
    log.info("loaded %d encoder tensors from %s", len(adapted), path)


def _read_weights(path: Path) -> dict:
    """A torch checkpoint (.pth/.pt, torchvision's and timm's) or a .safetensors file (what
    segmentation-models-pytorch downloads from its Hugging Face hub)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def save_model(path: Path | str, model: torch.nn.Module, spec: ModelSpec, meta: dict) -> None:
    payload = {"format": MODEL_FORMAT, "lungssl_version": __version__, "spec": asdict(spec),
               "normalisation": NORMALISATION_NAMES[spec.input_norm], "threshold": 0.5, "meta": meta,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    # To a handle, not a path: torch.save names the archive's records after the file, and the
    # random temp name would make two identical models differ byte for byte.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)


USE_A_MODEL = "use a model.pt written by `lungssl train` or the workflow (results/final/model.pt)"


def read_model_file(path: Path | str) -> dict:
    """The payload of a lungssl model file, or an error saying what the file is and what to do.

    weights_only=True: a model file from elsewhere can never run code on load."""
    import zipfile

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a readable lungssl model: not a file; {USE_A_MODEL}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses pickled code: a clear error, nothing executed
        if path.stat().st_size == 0:
            reason = "the file is empty"
        elif not zipfile.is_zipfile(path):
            reason = "not a PyTorch archive (truncated or corrupt, or another kind of file)"
        elif type(err).__name__ == "UnpicklingError":  # weights_only refused an object (no pickle import here)
            reason = "it holds Python objects or code, which are never loaded (a lungssl model holds only weights)"
        else:
            reason = f"the archive is damaged ({type(err).__name__})"
        raise ValueError(f"{path} is not a readable lungssl model: {reason}; {USE_A_MODEL}") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    if isinstance(found, str) and found.startswith("lungssl-model/") and found != MODEL_FORMAT:
        raise ValueError(f"{path} is a lungssl model of format {found} (written by lungssl "
                         f"{payload.get('lungssl_version', '?')}), but this lungssl {__version__} reads "
                         f"{MODEL_FORMAT}: predict with the lungssl version that wrote it, or retrain with this one")
    if found != MODEL_FORMAT:
        if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            what = ("bare weights (a state_dict), not a lungssl model; an ImageNet encoder checkpoint "
                    "belongs in model.encoder_weights_path")
        else:
            what = f"a PyTorch file but not a lungssl model (format {found!r}, expected {MODEL_FORMAT})"
        raise ValueError(f"{path} is {what}; {USE_A_MODEL}")
    missing = [k for k in ("spec", "state_dict", "meta") if not isinstance(payload.get(k), dict)]
    if missing:
        raise ValueError(f"{path} is a damaged lungssl model (no {', '.join(missing)}); {USE_A_MODEL}")
    return payload


def load_model(path: Path | str, device: torch.device | None = None) -> tuple[torch.nn.Module, ModelSpec, dict]:
    payload = read_model_file(path)
    try:
        spec = ModelSpec(**{**payload["spec"], "encoder_weights_path": None})
    except TypeError as err:
        raise ValueError(f"{path} describes its model in a way this lungssl {__version__} does not know "
                         f"({err}); predict with the lungssl version that wrote it "
                         f"({payload.get('lungssl_version', '?')}), or retrain") from None
    model = build_model(spec)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError:
        raise ValueError(f"{path} is a damaged lungssl model: its weights do not fit its own architecture "
                         f"({spec.arch}/{spec.encoder}); {USE_A_MODEL}") from None
    model.to(device or torch.device("cpu")).eval()
    return model, spec, payload["meta"]
