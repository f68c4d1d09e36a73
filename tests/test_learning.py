"""Unit tests of the learning stages: early stop, training/resume, models, inference, round chain."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lungssl import early_stop, self_learning, training
from lungssl.inference import clean_mask, lung_mask, predict_folder, predict_probs, to_mask
from lungssl.modeling import ModelSpec, build_model, load_model, normalise, read_model_file, save_model
from lungssl.storage import read_mask_stack, write_image_stack, write_mask_stack
from lungssl.training import (TrainingSet, TrainParams, add_opacities, build_augment, collect_targets, cosine_lr,
                              soft_dice_loss, train_model)
from tests.conftest import toy_radiograph, write_png

SPEC = ModelSpec(arch="Unet", encoder="resnet18", size=64)


# ---------------------------------------------------------------- early stop

def test_slope_ratio_falls_on_a_saturating_curve():
    t = np.arange(1, 21)
    values = list(0.9 * (1 - np.exp(-0.4 * t)))
    assert early_stop.slope_ratio(values[:3]) > 0.3
    assert early_stop.slope_ratio(values) < 0.05


def test_slope_ratio_needs_three_points():
    assert early_stop.slope_ratio([0.1, 0.2]) == 1.0


def test_slope_ratio_stays_high_on_a_straight_line():
    assert early_stop.slope_ratio([0.1 * i for i in range(1, 8)]) > 0.5


# ---------------------------------------------------------------- models

def test_model_round_trip_and_format_check(tmp_path):
    model = build_model(SPEC)
    save_model(tmp_path / "m.pt", model, SPEC, {"stage": "test"})
    loaded, spec, meta = load_model(tmp_path / "m.pt")
    assert spec == SPEC and meta["stage"] == "test"
    x = torch.zeros(1, 1, 64, 64)
    model.eval()
    assert torch.allclose(model(x), loaded(x))
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="bare weights"):
        read_model_file(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable lungssl model"):
        read_model_file(tmp_path / "junk.pt")


def test_encoder_weights_from_local_file_adapt_first_conv(tmp_path):
    rgb = build_model(ModelSpec(encoder="resnet18", size=64))
    import segmentation_models_pytorch as smp

    three = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=1)
    torch.save(three.encoder.state_dict(), tmp_path / "enc.pth")
    model = build_model(ModelSpec(encoder="resnet18", size=64, encoder_weights_path=str(tmp_path / "enc.pth")))
    w3 = three.encoder.state_dict()["conv1.weight"]
    assert torch.allclose(model.encoder.state_dict()["conv1.weight"], w3.sum(1, keepdim=True))
    assert not torch.allclose(rgb.encoder.state_dict()["conv1.weight"], model.encoder.state_dict()["conv1.weight"])
    with pytest.raises(FileNotFoundError):
        build_model(ModelSpec(encoder="resnet18", encoder_weights_path=str(tmp_path / "missing.pth")))
    # smp's own download is a .safetensors file: read the same way
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in three.encoder.state_dict().items()}, tmp_path / "model.safetensors")
    st = build_model(ModelSpec(encoder="resnet18", size=64, encoder_weights_path=str(tmp_path / "model.safetensors")))
    assert torch.allclose(st.encoder.state_dict()["conv1.weight"], w3.sum(1, keepdim=True))


# ---------------------------------------------------------------- training

def _toy_set(tmp_path: Path, n: int = 12, size: int = 64):
    imgs, masks = zip(*(toy_radiograph(size, seed=i) for i in range(n)))
    write_image_stack(tmp_path / "0000.npy", np.stack(imgs))
    ids = [f"img{i}" for i in range(n)]
    write_mask_stack(tmp_path / "t.npz", ids, np.stack(masks))
    manifest = pd.DataFrame({"image_id": ids, "shard": "0000", "row": range(n),
                             "split": ["val" if i % 4 == 0 else "train" for i in range(n)]})
    qc = pd.DataFrame({"image_id": ids, "qc_score": 0.9, "qc_pass": [i != 1 for i in range(n)]})
    return manifest, {"0000": tmp_path / "0000.npy"}, [tmp_path / "t.npz"], qc


def test_collect_targets_keeps_only_qc_passed_of_the_split(tmp_path):
    manifest, stacks, targets, qc = _toy_set(tmp_path)
    train = collect_targets(manifest, stacks, targets, ("train",), 64, qc)["train"]
    assert "img1" not in set(train.table["image_id"]) and len(train.table) == 8
    assert set(train.table["image_id"]).isdisjoint(manifest.loc[manifest.split == "val", "image_id"])
    assert (train.table["source"] == "").all() and (train.table["qc_score"] == 0.9).all()  # for the loss weights
    manifest["source"] = ["kermany" if i % 2 else None for i in range(12)]
    train = collect_targets(manifest, stacks, targets, ("train",), 64, qc)["train"]
    assert dict(zip(train.table["image_id"], train.table["source"]))["img2"] == ""
    assert dict(zip(train.table["image_id"], train.table["source"]))["img3"] == "kermany"


def test_collect_targets_with_min_qc_keeps_every_non_empty_mask_scored_high_enough(tmp_path):
    """min_qc replaces the pass/fail decision; an empty mask is never a target (no lungs found)."""
    manifest, stacks, targets, qc = _toy_set(tmp_path)
    qc["qc_score"] = [0.1 if i == 2 else 0.6 for i in range(12)]  # img1 fails QC, img2 scores low
    ids, masks = read_mask_stack(targets[0])
    masks[3] = False  # img3: the method found no lungs
    write_mask_stack(targets[0], ids, masks)
    kept = lambda min_qc: set(collect_targets(manifest, stacks, targets, ("train",), 64, qc, min_qc)["train"]
                              .table["image_id"])
    train_ids = set(manifest.loc[manifest.split == "train", "image_id"])
    assert kept(0.0) == train_ids - {"img3"}
    assert kept(0.5) == train_ids - {"img2", "img3"}
    assert kept(None) == train_ids - {"img1", "img3"}


def test_soft_dice_loss_is_zero_for_perfect_prediction():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    logits = (target * 2 - 1) * 50
    assert soft_dice_loss(logits, target).max() < 1e-3


def _lungs_and_mask():
    image, mask = toy_radiograph(128)
    return image, mask.astype(np.uint8)


def test_opacities_brighten_the_lungs_up_to_the_surrounding_tissue():
    image, mask = _lungs_and_mask()
    out = add_opacities(image, mask, np.random.default_rng(3))
    added = out.astype(int) - image.astype(int)
    assert added.min() >= 0 and added[mask > 0].max() > 0
    # Centred in the lungs: most of what is added lands inside them.
    assert added[mask > 0].sum() > added[mask == 0].sum()
    ceiling = np.percentile(image[mask == 0], 75) - np.median(image[mask > 0])
    assert added.max() <= 2 * ceiling + 1  # at most twice the span, where the mottling peaks


def test_opacities_need_lungs_and_are_seeded():
    image, mask = _lungs_and_mask()
    assert np.array_equal(add_opacities(image, np.zeros_like(mask), np.random.default_rng(0)), image)
    a = add_opacities(image, mask, np.random.default_rng(5))
    assert np.array_equal(a, add_opacities(image, mask, np.random.default_rng(5)))
    assert not np.array_equal(a, add_opacities(image, mask, np.random.default_rng(6)))


@pytest.mark.parametrize("opacity", [0.0, 1.0])
def test_augment_leaves_the_target_alone_and_repeats_with_its_seed(opacity):
    image, mask = _lungs_and_mask()
    p = TrainParams(opacity=opacity, hflip=False, shift=0, scale=0, rotate=0, brightness_contrast=0)
    aug = build_augment(p, seed=0)
    outs = []
    for _ in range(2):
        aug.set_random_seed(11)
        outs.append(aug(image=image, mask=mask))
    assert np.array_equal(outs[0]["image"], outs[1]["image"]) and np.array_equal(outs[0]["mask"], mask)
    assert np.array_equal(outs[0]["image"], image) == (opacity == 0.0)


def test_flip_mirrors_image_and_target_together():
    image, mask = _lungs_and_mask()
    mask = mask.copy()
    mask[:, : mask.shape[1] // 2] = 0  # one-sided, so a mirror is visible
    aug = build_augment(TrainParams(shift=0, scale=0, rotate=0, brightness_contrast=0), seed=0)
    flipped = 0
    for s in range(20):
        aug.set_random_seed(s)
        out = aug(image=image, mask=mask)
        mirrored = np.array_equal(out["mask"], mask[:, ::-1])
        assert mirrored or np.array_equal(out["mask"], mask)
        assert np.array_equal(out["image"], image[:, ::-1] if mirrored else image)
        flipped += mirrored
    assert 0 < flipped < 20  # on by default, for about half the images


FAST = TrainParams(epochs=3, min_epochs=1, batch_size=4, lr=1e-3, early_stop=False, seed=0)


def _film_with_padding(seed: int, pad: int) -> np.ndarray:
    """A noisy toy radiograph on grey levels 64, 72, .. 240, framed left and right by black padding."""
    noise = np.random.default_rng(seed).integers(0, 24, (64, 64))
    film = 64 + ((toy_radiograph(64, seed=seed)[0].astype(np.int32) * 160 // 255 + noise) // 8 * 8)
    return np.pad(film.astype(np.uint8), ((0, 0), (pad, pad)))


DARKER = np.round(255 * (np.arange(256) / 255.0) ** 2.0).astype(np.uint8)  # a gamma of 2: another device


def test_rank_input_ignores_grey_curves_and_padding_and_zscore_does_not():
    image = _film_with_padding(0, 12)
    assert len(np.unique(DARKER[image])) == len(np.unique(image))  # no two grey levels merge
    rank = normalise(image, "rank")
    assert np.array_equal(rank, normalise(DARKER[image], "rank"))
    assert np.array_equal(rank[:, 12:-12], normalise(_film_with_padding(0, 0), "rank"))  # padding width
    assert (rank[:, :12] == rank.min()).all() and rank.dtype == np.float32
    film = rank[:, 12:-12]
    assert abs(float(film.mean())) < 1e-3 and abs(float(film.std()) - 1) < 0.05
    assert not np.allclose(normalise(image, "zscore"), normalise(DARKER[image], "zscore"), atol=0.1)


def test_model_keeps_its_input_norm_and_older_files_read_as_zscore(tmp_path):
    spec = ModelSpec(arch="Unet", encoder="resnet18", size=64, input_norm="rank")
    save_model(tmp_path / "m.pt", build_model(spec), spec, {"stage": "test"})
    assert load_model(tmp_path / "m.pt")[1].input_norm == "rank"
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["spec"]["input_norm"]  # as written before the field existed
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt")[1].input_norm == "zscore"
    with pytest.raises(ValueError, match="unknown input_norm"):
        ModelSpec(input_norm="minmax")


def test_rank_model_predicts_the_same_under_an_increasing_grey_curve():
    spec = ModelSpec(arch="Unet", encoder="resnet18", size=64, input_norm="rank")
    model = build_model(spec).eval()
    imgs = np.stack([_film_with_padding(i, 8) for i in range(2)])
    assert np.array_equal(predict_probs(model, imgs, spec, torch.device("cpu"))[0],
                          predict_probs(model, DARKER[imgs], spec, torch.device("cpu"))[0])


def test_training_learns_and_is_reproducible(tmp_path):
    manifest, stacks, targets, qc = _toy_set(tmp_path)
    train = collect_targets(manifest, stacks, targets, ("train",), 64, qc)["train"]
    val = collect_targets(manifest, stacks, targets, ("val",), 64, qc)["val"]
    m1 = train_model(train, val, SPEC, FAST, tmp_path / "a.pt", tmp_path / "a_state.pt")
    m2 = train_model(train, val, SPEC, FAST, tmp_path / "b.pt", tmp_path / "b_state.pt")
    assert list(m1["epoch"]) == [1, 2, 3] and m1["chosen"].iloc[-1]
    assert m1["train_loss"].iloc[-1] < m1["train_loss"].iloc[0]
    pd.testing.assert_frame_equal(m1.drop(columns="seconds"), m2.drop(columns="seconds"))


def test_persistent_workers_train_exactly_as_in_process_loading(tmp_path):
    """Workers live for the whole job and hold no epoch state: each epoch's order and augmentation
    seeds travel with the batch keys, so two workers give the same model as none."""
    manifest, stacks, targets, qc = _toy_set(tmp_path)
    train = collect_targets(manifest, stacks, targets, ("train",), 64, qc)["train"]
    val = collect_targets(manifest, stacks, targets, ("val",), 64, qc)["val"]
    m0 = train_model(train, val, SPEC, FAST, tmp_path / "a.pt", tmp_path / "a_state.pt")
    two = TrainParams(**{**FAST.__dict__, "num_workers": 2})
    m2 = train_model(train, val, SPEC, two, tmp_path / "b.pt", tmp_path / "b_state.pt")
    pd.testing.assert_frame_equal(m0.drop(columns="seconds"), m2.drop(columns="seconds"))


def test_training_resumes_after_interruption(tmp_path):
    manifest, stacks, targets, qc = _toy_set(tmp_path)
    train = collect_targets(manifest, stacks, targets, ("train",), 64, qc)["train"]
    full = train_model(train, None, SPEC, FAST, tmp_path / "full.pt", tmp_path / "full_state.pt")
    # An interrupted job: only 2 of 3 epochs done, its state left behind.
    two = TrainParams(**{**FAST.__dict__, "epochs": 2})
    train_model(train, None, SPEC, two, tmp_path / "x.pt", tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    state["key"] = training._state_key(SPEC, FAST, train, None)
    torch.save(state, tmp_path / "state.pt")
    resumed = train_model(train, None, SPEC, FAST, tmp_path / "resumed.pt", tmp_path / "state.pt")
    assert list(resumed["epoch"]) == [1, 2, 3]
    assert resumed["train_loss"].tolist() == pytest.approx(full["train_loss"].tolist(), rel=1e-4)


def test_best_epoch_is_the_earliest_highest_held_out_dice():
    rows = [{"epoch": e, "val_dice": v} for e, v in [(1, 0.90), (2, 0.94), (3, 0.94), (4, 0.93)]]
    assert training.best_epoch(rows) == 2
    assert training.best_epoch([{"epoch": 1, "val_dice": float("nan")}]) is None


def test_kept_epoch_goes_back_only_for_a_fall_beyond_twice_the_standard_error():
    def history(last: float, se: float) -> list[dict]:
        return [{"epoch": 1, "val_dice": 0.90, "val_dice_se": se}, {"epoch": 2, "val_dice": 0.9374, "val_dice_se": se},
                {"epoch": 3, "val_dice": last, "val_dice_se": se}]
    assert training.kept_epoch(history(0.9314, 0.0016)) == 2    # the pediatric run's fall
    assert training.kept_epoch(history(0.9367, 0.0023)) == 3    # sampling noise of a small split
    assert training.kept_epoch(history(0.9400, 0.0016)) == 3    # still rising
    assert training.kept_epoch([{"epoch": 1, "val_dice": float("nan"), "val_dice_se": float("nan")}]) == 1


def _scripted_val(monkeypatch, scores: dict[int, float]) -> None:
    """Real training, but the held-out Dice of each epoch as scripted."""
    real = training.run_epoch

    def run(model, feed, p, epoch, device, optimizer=None):
        loss, dice, se = real(model, feed, p, epoch, device, optimizer)
        return (loss, dice, se) if optimizer is not None else (loss, scores[epoch], 0.01)
    monkeypatch.setattr(training, "run_epoch", run)


def test_restore_best_keeps_the_weights_of_the_best_held_out_epoch_also_after_a_resume(tmp_path, monkeypatch):
    manifest, stacks, targets, qc = _toy_set(tmp_path)
    train = collect_targets(manifest, stacks, targets, ("train",), 64, qc)["train"]
    val = collect_targets(manifest, stacks, targets, ("val",), 64, qc)["val"]
    _scripted_val(monkeypatch, {1: 0.5, 2: 0.9, 3: 0.7})
    best = TrainParams(**{**FAST.__dict__, "restore_best": True})
    two = TrainParams(**{**FAST.__dict__, "epochs": 2})
    metrics = train_model(train, val, SPEC, best, tmp_path / "best.pt", tmp_path / "best_state.pt")
    train_model(train, val, SPEC, two, tmp_path / "two.pt", tmp_path / "two_state.pt")
    assert metrics.loc[metrics["chosen"], "epoch"].tolist() == [2] and len(metrics) == 3
    weights = [load_model(tmp_path / f"{n}.pt")[0].state_dict() for n in ("best", "two")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    assert load_model(tmp_path / "best.pt")[2]["epoch"] == 2
    # A job killed after epoch 2 resumes with epoch 2's weights kept, and still returns them.
    train_model(train, val, SPEC, TrainParams(**{**best.__dict__, "epochs": 2}), tmp_path / "x.pt",
                tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    state["key"] = training._state_key(SPEC, best, train, None)
    torch.save(state, tmp_path / "state.pt")
    resumed = train_model(train, val, SPEC, best, tmp_path / "resumed.pt", tmp_path / "state.pt")
    assert resumed.loc[resumed["chosen"], "epoch"].tolist() == [2]
    again = load_model(tmp_path / "resumed.pt")[0].state_dict()
    assert all(torch.equal(again[k], weights[1][k]) for k in again)


def test_cosine_lr_anneals_from_the_base_rate_to_zero():
    rates = [cosine_lr(1e-3, d) for d in np.linspace(0, 1, 11)]
    assert rates[0] == pytest.approx(1e-3) and rates[5] == pytest.approx(5e-4) and rates[-1] == pytest.approx(0)
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_lr_decay_needs_a_fixed_number_of_epochs():
    with pytest.raises(ValueError, match="fixed number of epochs"):
        TrainParams(lr_decay=True)  # early_stop is on by default
    with pytest.raises(ValueError, match="fixed number of epochs"):
        TrainParams.from_config({"lr_decay": True, "early_stop": True})
    assert TrainParams(lr_decay=True, early_stop=False).lr_decay


def test_decayed_training_ends_near_zero_and_resumes_on_the_same_schedule(tmp_path, monkeypatch):
    """The rate comes from epoch and step alone: a job killed in its last epoch picks the schedule
    up where it was, and ends as the uninterrupted job does."""
    manifest, stacks, targets, qc = _toy_set(tmp_path)
    train = collect_targets(manifest, stacks, targets, ("train",), 64, qc)["train"]
    decay = TrainParams(**{**FAST.__dict__, "lr_decay": True})
    full = train_model(train, None, SPEC, decay, tmp_path / "full.pt", tmp_path / "full_state.pt")
    last_lr = torch.load(tmp_path / "full_state.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"]
    assert 0 < last_lr < 0.01 * decay.lr
    assert full["train_loss"].tolist() != pytest.approx(
        train_model(train, None, SPEC, FAST, tmp_path / "flat.pt", tmp_path / "flat_state.pt")["train_loss"].tolist())

    real_epoch = training.run_epoch

    def killed_in_epoch_3(model, feed, p, epoch, device, optimizer=None):
        if epoch == 3:
            raise KeyboardInterrupt
        return real_epoch(model, feed, p, epoch, device, optimizer)

    monkeypatch.setattr(training, "run_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_model(train, None, SPEC, decay, tmp_path / "x.pt", tmp_path / "state.pt")
    monkeypatch.setattr(training, "run_epoch", real_epoch)
    resumed = train_model(train, None, SPEC, decay, tmp_path / "x.pt", tmp_path / "state.pt")
    assert list(resumed["epoch"]) == [1, 2, 3]
    assert resumed["train_loss"].tolist() == pytest.approx(full["train_loss"].tolist(), rel=1e-4)


def test_finished_state_of_other_targets_is_not_resumed(tmp_path):
    """The incremental rerun after the weak-mask rule changes: same image ids, new target masks
    (or a new init model). The previous job's finished state must not stand in for the new one."""
    from lungssl.training import _state_key

    manifest, stacks, targets, qc = _toy_set(tmp_path)
    train = collect_targets(manifest, stacks, targets, ("train",), 64, qc)["train"]
    train_model(train, None, SPEC, FAST, tmp_path / "old.pt", tmp_path / "state.pt")
    iid = train.table["image_id"].iloc[0]
    changed = TrainingSet(table=train.table, stacks=train.stacks, size=train.size,
                          packed={**train.packed, iid: np.packbits(~np.unpackbits(train.packed[iid]).astype(bool))})
    assert _state_key(SPEC, FAST, changed, None) != _state_key(SPEC, FAST, train, None)
    assert _state_key(SPEC, FAST, train, tmp_path / "old.pt") != _state_key(SPEC, FAST, train, None)
    again = train_model(changed, None, SPEC, FAST, tmp_path / "new.pt", tmp_path / "state.pt")
    assert list(again["epoch"]) == [1, 2, 3]  # trained, not picked up as already finished
    assert (tmp_path / "new.pt").read_bytes() != (tmp_path / "old.pt").read_bytes()


def test_corrupt_resume_state_restarts_cleanly(tmp_path):
    manifest, stacks, targets, qc = _toy_set(tmp_path)
    train = collect_targets(manifest, stacks, targets, ("train",), 64, qc)["train"]
    (tmp_path / "state.pt").write_bytes(b"half-written")
    m = train_model(train, None, SPEC, FAST, tmp_path / "m.pt", tmp_path / "state.pt")
    assert list(m["epoch"]) == [1, 2, 3]


def test_training_refuses_an_empty_target_set(tmp_path):
    manifest, stacks, targets, qc = _toy_set(tmp_path)
    qc["qc_pass"] = False
    train = collect_targets(manifest, stacks, targets, ("train",), 64, qc)["train"]
    with pytest.raises(ValueError, match="no training images"):
        train_model(train, None, SPEC, FAST, tmp_path / "m.pt", tmp_path / "s.pt")
    assert not (tmp_path / "m.pt").exists()


# ---------------------------------------------------------------- inference

def test_predict_probs_shapes_and_tta_agreement():
    model = build_model(SPEC).eval()
    imgs = np.stack([toy_radiograph(80, seed=i)[0] for i in range(3)])
    probs, agree = predict_probs(model, imgs, SPEC, torch.device("cpu"), batch_size=2, tta=True)
    assert probs.shape == (3, 64, 64) and agree.shape == (3,)
    assert ((probs >= 0) & (probs <= 1)).all() and ((agree >= 0) & (agree <= 1)).all()


def test_lung_mask_thresholds_at_the_image_size_and_cleans():
    prob = np.zeros((32, 32), np.float32)
    prob[4:28, 4:12] = prob[4:28, 20:28] = 0.9
    prob[30, 30] = 0.9
    mask = clean_mask(to_mask(prob, 64, 48))
    assert mask.shape == (64, 48) and not mask[60:, 45:].any() and mask[30, 10]
    image = np.random.default_rng(0).integers(0, 256, (64, 48), dtype=np.uint8)  # film everywhere
    assert np.array_equal(lung_mask(prob, image), mask)  # the one recipe every prediction path uses


def test_lung_mask_stays_inside_the_film():
    # A film padded with black below and to the right; the model's lung runs on into the padding.
    image = np.zeros((64, 64), np.uint8)
    image[:48, :40] = np.random.default_rng(0).integers(30, 220, (48, 40))
    prob = np.zeros((64, 64), np.float32)
    prob[8:40, 4:16] = 0.9
    prob[8:60, 24:60] = 0.9  # the right lung spills over the film's edges
    mask = lung_mask(prob, image)
    assert not mask[48:].any() and not mask[:, 40:].any()  # nothing in the padding
    assert mask[8:40, 4:16].all() and mask[8:48, 24:40].all()  # the lung inside the film is kept
    unpadded = np.random.default_rng(1).integers(30, 220, (64, 64), dtype=np.uint8)
    assert np.array_equal(lung_mask(prob, unpadded), clean_mask(prob >= 0.5))  # no padding, no cut


def test_left_right_labels_and_plausibility():
    from lungssl.inference import left_right_labels

    mask = np.zeros((64, 64), bool)
    mask[10:50, 5:25] = mask[10:50, 35:58] = True
    labels, problem = left_right_labels(mask)
    assert problem == "" and labels[30, 10] == 1 and labels[30, 40] == 2 and labels[5, 5] == 0
    mask[:, 35:] = False
    assert left_right_labels(mask)[1] == "only one lung found"
    mask[10:14, 40:44] = True
    assert "differ" in left_right_labels(mask)[1]


def test_predict_folder_writes_masks_at_input_size_and_reports_rejects(tmp_path):
    model = build_model(SPEC)
    save_model(tmp_path / "m.pt", model, SPEC, {})
    write_png(tmp_path / "in" / "a.png", toy_radiograph(100)[0])
    write_png(tmp_path / "in" / "sub" / "b.png", toy_radiograph(90, seed=1)[0][:, :70])
    (tmp_path / "in" / "bad.png").write_text("no image")
    n, rejected = predict_folder(tmp_path / "m.pt", [tmp_path / "in"], tmp_path / "out", overlay=True,
                                 lr_labels=True)
    assert n == 2 and [Path(p).name for p, _ in rejected] == ["bad.png"]
    import cv2

    mask = cv2.imread(str(tmp_path / "out" / "sub" / "b.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (90, 70) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "out" / "a_overlay.png").is_file() and (tmp_path / "out" / "rejected.csv").is_file()
    assert (tmp_path / "out" / "a_lr.png").is_file() and len(pd.read_csv(tmp_path / "out" / "left_right.csv")) == 2


# ---------------------------------------------------------------- round chain

@pytest.mark.parametrize("r,frac,expected", [(1, 0.7, True), (1, 0.5, False), (5, 0.1, True), (1, 0.9, False),
                                             (1, 0.0, True)])
def test_round_decision(r, frac, expected):
    min_rounds = 2 if frac == 0.9 else 1
    assert self_learning.decide(r, frac, 0.66, min_rounds, 5)[0] is expected


def _chain(tmp_path: Path, stops: list[bool]) -> Path:
    root = tmp_path / "rounds"
    (root / "0").mkdir(parents=True)
    (root / "0" / "model.pt").write_bytes(b"model0")
    for r, stop in enumerate(stops, start=1):
        d = root / str(r)
        (d / "pseudo").mkdir(parents=True)
        (d / "model.pt").write_bytes(f"model{r}".encode())
        pd.DataFrame({"image_id": ["a"], "qc_pass": [True]}).to_parquet(d / "qc.parquet")
        (d / "pseudo" / "0000.npz").write_bytes(b"x")
        status = self_learning.RoundStatus(r, 0.5, 1, 1, stop, "test", self_learning.file_digest(root / str(r - 1) / "model.pt"),
                                           self_learning.file_digest(d / "qc.parquet"))
        self_learning.write_status(status, d / "status.json")
    return root


def _inputs(root: Path, last: int) -> list[Path]:
    return [*(root / str(r) / "status.json" for r in range(1, last + 1)), root / str(last) / "pseudo" / "0000.npz"]


def test_chain_record_names_the_last_round(tmp_path):
    root = _chain(tmp_path, [False, True])
    rec = self_learning.chain_record(_inputs(root, 2))
    assert rec["round"] == 2 and rec["init"].endswith("rounds/1/model.pt")
    assert rec["targets"] == [str(root / "2" / "pseudo" / "0000.npz")]


def test_chain_with_a_missing_round_fails_loudly(tmp_path):
    root = _chain(tmp_path, [False, True])
    with pytest.raises(self_learning.BrokenRoundChain, match="rounds 1..1"):
        self_learning.chain_record([root / "2" / "status.json", root / "2" / "pseudo" / "0000.npz"])


def test_chain_whose_last_round_did_not_stop_fails(tmp_path):
    root = _chain(tmp_path, [False, False])
    with pytest.raises(self_learning.BrokenRoundChain, match="did not stop"):
        self_learning.chain_record(_inputs(root, 2))


def test_chain_with_a_replaced_model_fails(tmp_path):
    root = _chain(tmp_path, [False, True])
    (root / "1" / "model.pt").write_bytes(b"retrained since")
    with pytest.raises(self_learning.BrokenRoundChain, match="another model"):
        self_learning.chain_record(_inputs(root, 2))


def test_chain_record_recheck_catches_later_changes(tmp_path):
    root = _chain(tmp_path, [True])
    rec = self_learning.chain_record(_inputs(root, 1))
    self_learning.check_chain_record(rec)
    (root / "0" / "model.pt").write_bytes(b"swapped")
    with pytest.raises(self_learning.BrokenRoundChain, match="changed after"):
        self_learning.check_chain_record(json.loads(json.dumps(rec)))


def test_source_balance_gives_each_source_the_same_total_weight():
    from lungssl.training import source_balance

    sources = pd.Series(["", "", "kermany", "kermany", "kermany", "kermany", None, "other"])
    w = source_balance(sources)
    totals = pd.Series(w).groupby(sources.fillna("").to_numpy()).sum()
    assert np.allclose(totals, totals.iloc[0]) and np.isclose(w.mean(), 1.0)
    assert np.array_equal(source_balance(pd.Series(["a"] * 5)), np.ones(5))  # one source: unchanged
    assert len(source_balance(pd.Series([], dtype=object))) == 0


def test_loss_weights_combine_qc_score_and_source_balance():
    from lungssl.training import loss_weights

    table = pd.DataFrame({"source": ["", "", "", "kermany"], "qc_score": [0.5, 1.0, 0.8, 0.6]})
    assert np.array_equal(loss_weights(table, TrainParams(balance_sources=False)), np.ones(4))
    assert np.allclose(loss_weights(table, TrainParams(balance_sources=False, qc_weight=True)), table.qc_score)
    balanced = loss_weights(table, TrainParams())
    assert np.isclose(balanced[:3].sum(), balanced[3]) and np.isclose(balanced.mean(), 1.0)
    both = loss_weights(table, TrainParams(qc_weight=True))
    assert np.allclose(both, balanced * table.qc_score)
