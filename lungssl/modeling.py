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

log = logging.getLogger("lungssl.modeling")

MODEL_FORMAT = "lungssl-model/1"


@dataclass(frozen=True)
class ModelSpec:
    arch: str = "Unet"
    encoder: str = "resnet34"
    size: int = 256
    encoder_weights_path: str | None = None  # local file only: nothing is ever downloaded

    @classmethod
    def from_config(cls, cfg: dict, size: int) -> "ModelSpec":
        return cls(arch=cfg.get("arch", "Unet"), encoder=cfg.get("encoder", "resnet34"), size=size,
                   encoder_weights_path=cfg.get("encoder_weights_path"))


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("a GPU was requested (--device cuda) but none is available; use --device cpu")
    return torch.device(requested)


def normalise(image: np.ndarray) -> np.ndarray:
    """Per-image z-score: removes exposure and contrast differences between devices."""
    x = image.astype(np.float32)
    return (x - x.mean()) / max(float(x.std()), 1.0)


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
        state = torch.load(path, map_location="cpu", weights_only=True)
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


def save_model(path: Path | str, model: torch.nn.Module, spec: ModelSpec, meta: dict) -> None:
    payload = {"format": MODEL_FORMAT, "lungssl_version": __version__, "spec": asdict(spec),
               "normalisation": "per_image_zscore", "threshold": 0.5, "meta": meta,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    # To a handle, not a path: torch.save names the archive's records after the file, and the
    # random temp name would make two identical models differ byte for byte.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)


def read_model_file(path: Path | str) -> dict:
    """weights_only=True: a model file from elsewhere can never run code on load."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"{path} is not a readable lungssl model ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a {MODEL_FORMAT} file (found {found!r}); retrain or use a matching lungssl")
    return payload


def load_model(path: Path | str, device: torch.device | None = None) -> tuple[torch.nn.Module, ModelSpec, dict]:
    payload = read_model_file(path)
    spec = ModelSpec(**{**payload["spec"], "encoder_weights_path": None})
    model = build_model(spec)
    model.load_state_dict(payload["state_dict"])
    model.to(device or torch.device("cpu")).eval()
    return model, spec, payload["meta"]
