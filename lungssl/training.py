"""Training: one module for every model of the pipeline (early learning, rounds, final, supervised).

Images stream from the per-shard memory-mapped stacks and targets are held bit-packed, so memory
is set by the batch size (plus 1/8 byte per target pixel), not by the data set.
A training job saves its state each epoch; rerun after a kill, it resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lungssl.early_stop import slope_ratio
from lungssl.ingest import resize_image, resize_mask
from lungssl.loader import file_digest
from lungssl.modeling import ModelSpec, build_model, load_model, normalise, pick_device, save_model
from lungssl.progress import Progress
from lungssl.storage import atomic_path, read_image_stack, read_mask_stack

log = logging.getLogger("lungssl.training")


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 30               # upper bound; the early-learning stop usually ends sooner
    min_epochs: int = 3
    early_stop: bool = True        # stop at the elbow of the training-Dice curve (ADELE rule)
    slope_fraction: float = 0.1    # ... when its fitted slope falls below this share of the initial slope
    restore_best: bool = False     # go back to the best held-out epoch after a clear fall (kept_epoch)
    batch_size: int = 32
    lr: float = 1e-4
    bce_weight: float = 0.0        # 0: Dice loss alone; >0 adds BCE
    qc_weight: bool = False        # weight each image's loss by its QC score
    balance_sources: bool = True   # every input source's images together weigh the same in the loss
    min_qc: float | None = None    # QC score a mask needs to be a training target; None: it must pass QC
    hflip: bool = True             # mirrored X-rays: the flip-TTA views are in distribution (docs/results.md)
    shift: float = 0.05
    scale: float = 0.1
    rotate: float = 5.0
    brightness_contrast: float = 0.2
    opacity: float = 0.0           # share of training images given simulated opacities inside the lungs
    num_workers: int = 0
    min_steps_per_epoch: int = 20  # small cohorts repeat within an epoch, so curves share one time scale
    lr_decay: bool = False         # cosine-anneal the learning rate to 0 over the (fixed) epochs
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: dict) -> "TrainParams":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"unknown training parameter(s): {', '.join(sorted(unknown))}")
        return cls(**cfg)

    def __post_init__(self):
        if self.lr_decay and self.early_stop:
            raise ValueError("lr_decay needs a fixed number of epochs: the early-learning stop would cut "
                             "the schedule at an unknown point (set early_stop: false)")


TABLE_COLUMNS = ("image_id", "shard", "row", "source", "qc_score")


@dataclass
class TrainingSet:
    """Which images to train on, where their pixels live, and their targets (bit-packed)."""
    table: pd.DataFrame            # image_id, shard, row, source, qc_score
    stacks: dict[str, Path]        # shard -> image stack (.npy)
    packed: dict[str, np.ndarray] = field(default_factory=dict)
    size: int = 256


def collect_targets(manifest: pd.DataFrame, image_stacks: dict[str, Path], mask_files: list[Path],
                    splits: tuple[str, ...], size: int, qc: pd.DataFrame | None = None,
                    min_qc: float | None = None) -> dict[str, TrainingSet]:
    """Targets per split: the non-empty masks of mask_files; with a QC table, only those whose QC
    score is at least `min_qc` (None: those that pass QC). The mask files are read once for all splits.

    An empty mask is never a target: it says the method found no lungs, not that there are none."""
    rows = manifest[manifest["split"].isin(splits)][["image_id", "shard", "row", "split"]].copy()
    rows["source"] = manifest["source"].fillna("").astype(str) if "source" in manifest else ""
    if qc is None:
        rows["qc_score"] = 1.0
    else:
        rows = rows.merge(qc[["image_id", "qc_score", "qc_pass"]], on="image_id")
        keep = rows["qc_pass"].astype(bool) if min_qc is None else rows["qc_score"].astype(float) >= min_qc
        rows = rows[keep]
        rows["qc_score"] = rows["qc_score"].astype(float)
    wanted = set(rows["image_id"])
    packed = {}
    for path in mask_files:
        ids, masks = read_mask_stack(path)
        packed.update({iid: np.packbits(m) for iid, m in zip(ids, masks) if iid in wanted and m.any()})
    rows = rows[rows["image_id"].isin(packed)].sort_values("image_id")
    sets = {}
    for split in splits:
        part = rows[rows["split"] == split].reset_index(drop=True)
        sets[split] = TrainingSet(table=part[list(TABLE_COLUMNS)], stacks=image_stacks,
                                  packed={iid: packed[iid] for iid in part["image_id"]}, size=size)
    return sets


def loss_weights(table: pd.DataFrame, p: TrainParams) -> np.ndarray:
    """Each image's weight in the loss: its QC score (qc_weight), times its source's balance factor
    (balance_sources); all ones with neither."""
    w = table["qc_score"].to_numpy(float) if p.qc_weight else np.ones(len(table))
    return w * source_balance(table["source"]) if p.balance_sources else w


def source_balance(sources: pd.Series) -> np.ndarray:
    """Per-image loss factors under which every source's images together weigh the same; their mean is 1.

    An extra set many times the size of the user's cohort (thousands of pediatric films beside a few
    hundred adult ones) would otherwise set what the model learns; balanced, it adds variety without
    outvoting the cohort (docs/results.md: the pediatric-added runs, +0.0028 and +0.0003 on the adult dev
    images for two seeds, early learning ending on the same epoch)."""
    sources = sources.fillna("").astype(str)
    counts = sources.map(sources.value_counts()).to_numpy(float)
    return len(sources) / (sources.nunique() * counts) if len(sources) else np.zeros(0)


def build_augment(p: TrainParams, seed: int):
    import albumentations as A
    import cv2

    steps = [A.HorizontalFlip(p=0.5)] if p.hflip else []
    steps += [
        A.Affine(translate_percent=(-p.shift, p.shift), scale=(1 - p.scale, 1 + p.scale),
                 rotate=(-p.rotate, p.rotate), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.8),
        A.RandomBrightnessContrast(brightness_limit=p.brightness_contrast,
                                   contrast_limit=p.brightness_contrast, p=0.8),
    ]
    return Augment(A.Compose(steps, seed=seed), p.opacity)


class Augment:
    """The albumentations pipeline, then (for a share of the images) simulated opacities."""

    def __init__(self, compose, opacity: float):
        self.compose, self.opacity, self._seed = compose, opacity, 0

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)
        self._seed = seed

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict:
        out = self.compose(image=image, mask=mask)
        rng = np.random.default_rng(self._seed)
        if self.opacity > 0 and rng.random() < self.opacity:
            out["image"] = add_opacities(out["image"], out["mask"], rng)
        return out


def add_opacities(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, max_blobs: int = 3) -> np.ndarray:
    """uint8 image with 1..max_blobs bright, mottled, soft-edged blobs centred inside the mask.

    Weak masks are drawn from darkness, so consolidation, effusion or fibrosis is left out of them and
    a model trained on them learns "lung = dark". Opacities painted into the lungs with the target
    unchanged teach it that a lung stays lung when it turns white. A blob reaches at most the
    brightness of the tissue around the lungs (the 75th percentile outside the mask), so its
    contrast follows each image's exposure instead of a fixed grey level."""
    inside = mask > 0
    if not inside.any() or inside.all():
        return image
    span = float(np.percentile(image[~inside], 75)) - float(np.median(image[inside]))
    if span <= 0:
        return image
    import cv2

    h, w = image.shape
    ys, xs = np.nonzero(inside)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    added = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, max_blobs + 1))):
        i = int(rng.integers(len(ys)))
        sy, sx = rng.uniform(0.04, 0.15, 2) * np.array([h, w])
        blob = np.exp(-0.5 * (((yy - ys[i]) / sy) ** 2 + ((xx - xs[i]) / sx) ** 2))
        added = np.maximum(added, rng.uniform(0.3, 1.0) * blob)
    # Mottling: real opacities are patchy (air bronchograms, nodular infiltrates), not smooth domes.
    noise = cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), max(1.0, h / 128))
    noise = (noise - noise.mean()) / (noise.std() + 1e-6)
    added *= np.clip(1.0 + 0.3 * noise, 0.0, 2.0)
    return np.clip(image.astype(np.float32) + span * added, 0, 255).astype(np.uint8)


def aug_seed(seed: int, epoch: int, pos: int) -> int:
    """The augmentation seed of position `pos` of an epoch: the same whichever worker draws the item,
    so a resumed run sees exactly what an uninterrupted one would."""
    return int(seed * 1_000_003 + epoch * 100_003 + pos) % 2**31


class MaskDataset(Dataset):
    """Item key (index, augmentation seed). The keys come from the batch sampler in the training
    process, so worker processes hold no per-epoch state and persist across epochs."""

    def __init__(self, ts: TrainingSet, augment=None, input_norm: str = "zscore",
                 weights: np.ndarray | None = None):
        self.ts, self.augment, self.input_norm = ts, augment, input_norm
        self.weights = np.ones(len(ts.table)) if weights is None else weights
        self._stacks: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ts.table)

    def _image(self, shard: str, row: int) -> np.ndarray:
        if shard not in self._stacks:  # opened lazily so that each worker maps its own
            self._stacks[shard] = read_image_stack(self.ts.stacks[shard])
        return np.asarray(self._stacks[shard][row])

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        rec = self.ts.table.iloc[int(index)]
        image = self._image(rec["shard"], int(rec["row"]))
        n = image.shape[0]
        mask = np.unpackbits(self.ts.packed[rec["image_id"]], count=n * n).reshape(n, n)
        if n != self.ts.size:  # the model may train below the working resolution
            image = resize_image(image, self.ts.size)
            mask = resize_mask(mask, self.ts.size).astype(np.uint8)
        if self.augment is not None:
            self.augment.set_random_seed(seed)
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        x = torch.from_numpy(normalise(image, self.input_norm))[None]
        y = torch.from_numpy(mask.astype(np.float32))[None]
        return x, y, torch.tensor(float(self.weights[int(index)]))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image soft Dice loss (so that images can be weighted)."""
    prob = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (prob * t).sum(1)
    return 1 - (2 * inter + 1) / (prob.sum(1) + t.sum(1) + 1)


def hard_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = (logits > 0).flatten(1).float()
    t = target.flatten(1)
    total = pred.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * (pred * t).sum(1) / total.clamp(min=1), torch.ones_like(total))


def loss_fn(logits, target, weight, p: TrainParams) -> torch.Tensor:
    per_image = soft_dice_loss(logits, target)
    if p.bce_weight > 0:
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        per_image = per_image + p.bce_weight * bce.flatten(1).mean(1)
    return (per_image * weight).sum() / weight.sum().clamp(min=1e-6)


def epoch_order(n: int, p: TrainParams, epoch: int) -> np.ndarray:
    """Seeded shuffles of the training set, repeated until the epoch has min_steps_per_epoch batches."""
    rng = np.random.default_rng([p.seed, epoch])
    passes = max(1, -(-p.min_steps_per_epoch * p.batch_size // max(n, 1)))
    return np.concatenate([rng.permutation(n) for _ in range(passes)]) if n else np.zeros(0, int)


def batches(n: int, batch_size: int) -> list[list[int]]:
    """Positions 0..n-1 in batches of batch_size, never a batch of one when batch_size > 1.

    BatchNorm cannot normalise a single sample whose deepest feature map is 1 x 1 (a 32 px
    model): a trailing single item joins the batch before it, and a lone item is doubled, which
    gives exactly the statistics and gradient of that one item."""
    out = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    if batch_size > 1 and out and len(out[-1]) == 1:
        if len(out) > 1:
            last = out.pop()
            out[-1] += last
        else:
            out[-1] *= 2
    return out


class EpochBatches(Sampler):
    """Batches of dataset keys, replaced before each pass (see `Feed`)."""

    def __init__(self, batch_size: int):
        self.batch_size, self.keys = batch_size, []

    def __iter__(self):
        for batch in batches(len(self.keys), self.batch_size):
            yield [self.keys[i] for i in batch]

    def __len__(self) -> int:
        return len(batches(len(self.keys), self.batch_size))


class Feed:
    """A dataset behind one DataLoader whose workers live for the whole training job: starting
    workers for every pass cost more than the passes themselves on a GPU."""

    def __init__(self, ds: MaskDataset, p: TrainParams, device: torch.device):
        self.ds, self.sampler = ds, EpochBatches(p.batch_size)
        self.loader = DataLoader(ds, batch_sampler=self.sampler, num_workers=p.num_workers,
                                 persistent_workers=p.num_workers > 0, pin_memory=device.type == "cuda")

    def __len__(self) -> int:
        return len(self.ds)

    def pass_over(self, keys: list[tuple[int, int]]):
        self.sampler.keys = keys
        return iter(self.loader)


def epoch_keys(n: int, p: TrainParams, epoch: int, augmented: bool) -> list[tuple[int, int]]:
    """A training epoch's seeded shuffle with per-position augmentation seeds, or every item once."""
    if not augmented:
        return [(i, 0) for i in range(n)]
    return [(int(i), aug_seed(p.seed, epoch, pos)) for pos, i in enumerate(epoch_order(n, p, epoch))]


def _to(device: torch.device, x: torch.Tensor) -> torch.Tensor:
    if device.type == "cuda":
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device)


def cosine_lr(base: float, done: float) -> float:
    """The learning rate after the share `done` (0..1) of all training steps, annealed to 0.

    A constant rate leaves a short fixed-epoch fine-tune wherever its last noisy steps put it; the
    decay lets it settle (docs/results.md: +0.001 on the dev set over three seeds, +0.003 on an unseen hospital)."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(max(done, 0.0), 1.0)))


def run_epoch(model, feed: Feed, p: TrainParams, epoch: int, device,
              optimizer=None) -> tuple[float, float, float]:
    """One pass; trains when an optimizer is given. Returns (mean loss, mean hard Dice per image, its
    standard error)."""
    train = optimizer is not None
    model.train(train)
    keys = epoch_keys(len(feed), p, epoch, augmented=train)
    losses, dices, n = 0.0, [], 0
    amp = device.type == "cuda"
    batches_in = feed.pass_over(keys)
    # Between the per-epoch lines, a long epoch says how far it got every LUNGSSL_PROGRESS_SECONDS.
    progress = Progress(len(feed.loader), f"epoch {epoch} {'training' if train else 'validation'}",
                        unit="batches", terminal=False)
    with torch.set_grad_enabled(train):
        for step, (x, y, w) in enumerate(batches_in):
            x, y, w = _to(device, x), y.to(device, non_blocking=True), w.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = loss_fn(logits.float(), y, w, p)
            if train:
                if p.lr_decay:  # from epoch and step alone, so a resumed job continues the same schedule
                    done = ((epoch - 1) * len(feed.loader) + step) / (p.epochs * len(feed.loader))
                    for group in optimizer.param_groups:
                        group["lr"] = cosine_lr(p.lr, done)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            losses += float(loss.detach()) * len(x)
            dices += hard_dice(logits.float(), y).tolist()
            n += len(x)
            progress.update()
    se = float(np.std(dices, ddof=1) / np.sqrt(n)) if n > 1 else np.nan
    return losses / max(n, 1), float(np.mean(dices)) if dices else 0.0, se


@torch.no_grad()
def recalibrate_batchnorm(model, feed: Feed, p: TrainParams, device) -> None:
    """Replace BatchNorm running statistics by exact averages over the (unaugmented) training set.

    With few optimisation steps (small cohorts, early stopping) the exponential running averages
    still lag far behind the weights, and eval-mode predictions, hence pseudo-masks, are poor.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or len(feed) == 0:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches of the pass
    model.train()
    amp = device.type == "cuda"
    for x, _, _ in feed.pass_over(epoch_keys(len(feed), p, 0, augmented=False)):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(_to(device, x))
    for bn, m in zip(bns, momenta):
        bn.momentum = m


def _state_key(spec: ModelSpec, p: TrainParams, train: TrainingSet, init: Path | None) -> str:
    """Identifies a training job's inputs, so a stale resume state is never picked up.

    By content, not by name: after the weak-mask rule changes, a rerun trains on the same image ids
    with new target masks (and from a new init model), and a finished state from the old targets
    must not be taken for the new job's."""
    h = hashlib.sha256(json.dumps([asdict(spec), asdict(p)], sort_keys=True).encode())
    h.update(train.table[list(TABLE_COLUMNS)].to_csv(index=False).encode())
    for iid in train.table["image_id"]:
        h.update(train.packed[iid].tobytes())
    for shard in sorted(set(train.table["shard"])):
        h.update(file_digest(train.stacks[shard]).encode())
    h.update(file_digest(init).encode() if init else b"random init")
    return h.hexdigest()[:16]


def check_trainable(stage: str, train: TrainingSet, manifest: pd.DataFrame, qc: pd.DataFrame | None,
                    min_qc: float | None = None) -> None:
    """Refuse, with the cause and the knob to turn, a stage left without a single training target."""
    if len(train.table):
        return
    train_ids = manifest.loc[manifest["split"] == "train", "image_id"]
    scored = qc[qc["image_id"].isin(train_ids)] if qc is not None else pd.DataFrame({"qc_pass": []})
    raise ValueError(empty_training_message(stage, len(train_ids), len(scored), int(scored["qc_pass"].sum()),
                                            min_qc))


def empty_training_message(stage: str, n_split: int, n_scored: int, n_passed: int,
                           min_qc: float | None = None) -> str:
    """Why a stage has nothing to train on, and which knob to turn."""
    if not n_scored:
        what = f"{stage}: nothing to train on: none of the {n_split} training-split images has a target mask, " \
               "so no model is written"
    elif min_qc is None:
        what = (f"{stage}: nothing to train on: {n_passed} of the {n_scored} target masks of the {n_split} "
                "training-split images passed QC (train.min_qc: null), so no model is written")
    else:
        what = (f"{stage}: nothing to train on: none of the {n_scored} target masks of the {n_split} "
                f"training-split images is non-empty with a QC score >= train.min_qc ({min_qc}), "
                "so no model is written")
    knob = "lower qc.cohort_threshold (qc.threshold for qc.method: shape)" if min_qc is None else \
        "lower train.min_qc"
    if stage == "early_learning":
        return (f"{what}. See results/qc/weak_summary.json and results/qc/weak_hist.png, then {knob} "
                "or adjust the weak_masks.* parameters")
    if stage == "supervised":
        return f"{what}. Without ground-truth masks set supervised.enabled: false"
    return f"{what}. {knob[0].upper()}{knob[1:]} or check the model of the previous stage"


def train_model(train: TrainingSet, val: TrainingSet | None, spec: ModelSpec, p: TrainParams,
                out_model: Path, state_path: Path, init_model: Path | None = None,
                threads: int = 1, meta: dict | None = None, device: str = "auto") -> pd.DataFrame:
    """Train, stopping at the label-free elbow; returns the per-epoch metrics table.
    device: auto | cpu | cuda (see modeling.pick_device)."""
    if len(train.table) == 0:
        raise ValueError("no training images: every target mask was rejected by QC (nothing to learn from)")
    torch.manual_seed(p.seed)
    torch.set_num_threads(max(1, threads))
    device = pick_device(device)
    log.info("training on %s", device)
    model = load_model(init_model, device)[0] if init_model else build_model(spec).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
    key = _state_key(spec, p, train, init_model)
    history, start, best = _resume(state_path, key, model, optimizer, device)
    if p.balance_sources:
        log.info("sources balanced in the loss: %s", train.table["source"].value_counts().to_dict())
    train_feed = Feed(MaskDataset(train, build_augment(p, p.seed), spec.input_norm,
                                  loss_weights(train.table, p)), p, device)
    plain_train_feed = Feed(MaskDataset(train, input_norm=spec.input_norm), p, device)
    has_val = val is not None and len(val.table) > 0
    val_feed = (Feed(MaskDataset(val, input_norm=spec.input_norm, weights=loss_weights(val.table, p)), p, device)
                if has_val else None)
    stopped = history[-1]["epoch"] if history and history[-1].get("stop") else None
    for epoch in range(start, p.epochs + 1):
        if stopped is not None:
            break
        t0 = time.perf_counter()
        tr_loss, tr_dice, _ = run_epoch(model, train_feed, p, epoch, device, optimizer)
        recalibrate_batchnorm(model, plain_train_feed, p, device)
        va_loss, va_dice, va_se = run_epoch(model, val_feed, p, epoch, device) if val_feed else (np.nan,) * 3
        row = {"epoch": epoch, "train_loss": tr_loss, "train_dice": tr_dice, "val_loss": va_loss,
               "val_dice": va_dice, "val_dice_se": va_se, "seconds": time.perf_counter() - t0,
               "n_train": len(train.table)}
        row["slope_ratio"] = slope_ratio([h["train_dice"] for h in history] + [tr_dice])
        row["stop"] = bool(p.early_stop and epoch >= p.min_epochs and row["slope_ratio"] <= p.slope_fraction)
        history.append(row)
        log.info("epoch %d/%d  train loss %.4f dice %.4f  val loss %.4f dice %.4f  slope %.3f  %.1fs",
                 epoch, p.epochs, tr_loss, tr_dice, va_loss, va_dice, row["slope_ratio"], row["seconds"])
        if p.restore_best and best_epoch(history) == epoch:
            best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        _save_state(state_path, key, model, optimizer, history, best)
        if row["stop"]:
            stopped = epoch
    chosen = kept_epoch(history) if p.restore_best and best else history[-1]["epoch"]
    if chosen != history[-1]["epoch"]:
        log.info("keeping epoch %d: its held-out Dice beats the last epoch's by more than twice that one's "
                 "standard error", chosen)
        model.load_state_dict(best)
    save_model(out_model, model, spec, {**(meta or {}), "epoch": chosen, "n_train": len(train.table),
                                        "stopped_early": history[-1]["epoch"] < p.epochs})
    return pd.DataFrame(history).assign(chosen=lambda d: d["epoch"] == chosen)


def best_epoch(history: list[dict]) -> int | None:
    """The earliest epoch with the highest held-out Dice; None without a validation split.

    The held-out weak masks are as noisy as the training ones but never trained on, so their Dice
    falls once the network fits the training masks' own errors (docs/results.md: the pediatric cohort, 79
    batches an epoch, overshot at five epochs). Errors that all weak masks share it cannot see."""
    scores = [(h["val_dice"], -h["epoch"]) for h in history if np.isfinite(h["val_dice"])]
    return -max(scores)[1] if scores else None


def kept_epoch(history: list[dict]) -> int:
    """The last epoch, unless the best held-out epoch beats it by more than twice the standard error
    of the last epoch's mean held-out Dice: a fall that size is the network fitting noise, not the
    sampling noise of a small validation split (docs/results.md: 0.0060 at 0.0016 on the pediatric cohort,
    kept; 0.0007 at 0.0023 on a Shenzhen-only run, not)."""
    last, best = history[-1], best_epoch(history)
    if best is None or best == last["epoch"]:
        return last["epoch"]
    fall = next(h["val_dice"] for h in history if h["epoch"] == best) - last["val_dice"]
    return best if fall > 2 * last.get("val_dice_se", np.nan) else last["epoch"]


def _save_state(path: Path, key: str, model, optimizer, history: list[dict], best: dict | None) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a handle: see modeling.save_model
        torch.save({"key": key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "history": json.dumps(history), "best": best}, fh)


def _resume(path: Path, key: str, model, optimizer, device) -> tuple[list[dict], int, dict | None]:
    """Pick up a killed job's last finished epoch (and its best epoch's weights, if kept); anything
    stale or unreadable restarts cleanly."""
    if not path.is_file():
        return [], 1, None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if state.get("key") != key:
            log.info("ignoring resume state from different inputs: %s", path)
            return [], 1, None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = json.loads(state["history"])
        best = {k: v.cpu() for k, v in state["best"].items()} if state.get("best") else None
    except Exception as err:  # a corrupt state must never stop a fresh start
        log.warning("cannot resume from %s (%s); restarting", path, err)
        return [], 1, None
    log.info("resuming after epoch %d", history[-1]["epoch"] if history else 0)
    return history, (history[-1]["epoch"] + 1 if history else 1), best
