"""The self-learning loop's bookkeeping: when a round stops it, and proof that the chain is intact.

Round r: the model of round r-1 predicts pseudo-masks, QC scores them, and the loop stops when
enough training masks pass (or at the round limit); otherwise round r trains on the passed masks.
Every round writes a status file naming the model that predicted it (by content hash), so the
final stage can check that it received the last round of one unbroken chain, never a stale one.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from lungssl.loader import file_digest


@dataclass(frozen=True)
class RoundStatus:
    round: int
    pass_fraction: float
    n_train: int
    n_pass: int
    stop: bool
    reason: str
    model_sha256: str   # the model that predicted this round's pseudo-masks (round r-1)
    qc_sha256: str      # this round's merged QC table


def decide(round_: int, pass_fraction: float, target_pass: float, min_rounds: int, max_rounds: int) -> tuple[bool, str]:
    if pass_fraction == 0:
        # Nothing to train the next round on: stop here, and the final stage says so plainly.
        return True, "no pseudo-mask passed QC"
    if round_ >= max_rounds:
        return True, f"round limit {max_rounds} reached"
    if round_ < min_rounds:
        return False, f"at least {min_rounds} rounds requested"
    if pass_fraction >= target_pass:
        return True, f"pass fraction {pass_fraction:.3f} >= target {target_pass:.3f}"
    return False, f"pass fraction {pass_fraction:.3f} < target {target_pass:.3f}"


def train_pass(qc: pd.DataFrame, manifest: pd.DataFrame) -> tuple[int, int, float]:
    """(passed, training-split masks, pass fraction): over the training split only, so validation
    images never steer the loop."""
    train_ids = set(manifest.loc[manifest["split"] == "train", "image_id"])
    train_qc = qc[qc["image_id"].isin(train_ids)]
    n_pass = int(train_qc["qc_pass"].sum())
    return n_pass, len(train_qc), n_pass / len(train_qc) if len(train_qc) else 0.0


def round_status(round_: int, qc: pd.DataFrame, manifest: pd.DataFrame, model: Path, qc_path: Path,
                 target_pass: float, min_rounds: int, max_rounds: int) -> RoundStatus:
    n_pass, n_train, frac = train_pass(qc, manifest)
    stop, reason = decide(round_, frac, target_pass, min_rounds, max_rounds)
    return RoundStatus(round_, frac, n_train, n_pass, stop, reason, file_digest(model), file_digest(qc_path))


def write_status(status: RoundStatus, path: Path) -> None:
    from lungssl.storage import write_json

    write_json(asdict(status), path)


def read_status(path: Path) -> RoundStatus:
    return RoundStatus(**json.loads(Path(path).read_text()))


def pass_fractions(weak_qc: pd.DataFrame, manifest: pd.DataFrame, status_paths: list[Path]) -> pd.DataFrame:
    """One row per round (0 = the weak masks early learning trained on): training-split pass
    fraction, counts, and whether and why the loop stopped there."""
    n_pass, n_train, frac = train_pass(weak_qc, manifest)
    rows = [{"round": 0, "pass_fraction": frac, "n_pass": n_pass, "n_train": n_train, "stop": False,
             "reason": "weak masks (early learning)"}]
    for s in sorted((read_status(p) for p in status_paths), key=lambda s: s.round):
        rows.append({"round": s.round, "pass_fraction": s.pass_fraction, "n_pass": s.n_pass, "n_train": s.n_train,
                     "stop": s.stop, "reason": s.reason})
    return pd.DataFrame(rows)


class BrokenRoundChain(RuntimeError):
    """The rounds handed to the final stage are not one complete, consistent chain."""


class NothingToTrainOn(ValueError):
    """The loop stopped because no pseudo-mask passed QC: the final stage has no targets."""


def check_usable(last: RoundStatus, status_path: Path, model_path: Path) -> None:
    """A round whose pseudo-masks all failed QC stops the loop; the final stage then fails loudly
    instead of training on nothing (or silently on something else)."""
    if last.n_pass == 0:
        raise NothingToTrainOn(
            f"round {last.round} stopped the self-learning loop because no pseudo-mask passed QC "
            f"(0 of {last.n_train} training-split masks; see {status_path}): there is nothing to train the "
            f"final model on, so none is written. The last trained model is {model_path}; train it longer "
            "(early_learning.min_epochs, self_learning.min_epochs) or lower qc.cohort_threshold")


def verify_chain(status_paths: list[Path], models: dict[int, Path], qc_tables: dict[int, Path]) -> RoundStatus:
    """Check rounds 1..R are all present, only R stops, and each was made by the model it names."""
    statuses = [read_status(p) for p in status_paths]
    rounds = [s.round for s in statuses]
    if rounds != list(range(1, len(rounds) + 1)):
        raise BrokenRoundChain(f"round status files are not rounds 1..{len(rounds)} in order: {rounds}")
    for s in statuses[:-1]:
        if s.stop:
            raise BrokenRoundChain(f"round {s.round} says the loop stopped ({s.reason}) but later rounds were given")
    last = statuses[-1]
    if not last.stop:
        raise BrokenRoundChain(f"the last round given ({last.round}) did not stop the loop ({last.reason})")
    for s in statuses:
        if s.round in models and file_digest(models[s.round]) != s.model_sha256:
            raise BrokenRoundChain(f"round {s.round} was predicted by another model than {models[s.round]} "
                                   "(it was retrained or replaced since); rerun the workflow")
        if s.round in qc_tables and file_digest(qc_tables[s.round]) != s.qc_sha256:
            raise BrokenRoundChain(f"the QC table of round {s.round} changed after its status was written")
    return last


def chain_record(inputs: list[Path]) -> dict:
    """Verify the round chain found among a rule's inputs and say what the final stage trains on.

    Paths follow the workflow's layout: rounds/<r>/status.json, rounds/<r>/qc.parquet,
    rounds/<r>/pseudo/<shard>.npz and rounds/<r-1>/model.pt (the model that predicted round r).
    """
    status_paths = sorted((p for p in inputs if p.name == "status.json"), key=lambda p: int(p.parent.name))
    if not status_paths:
        raise BrokenRoundChain("no round status files were given")
    root = status_paths[0].parent.parent
    rounds = [int(p.parent.name) for p in status_paths]
    models = {r: root / str(r - 1) / "model.pt" for r in rounds}
    qcs = {r: root / str(r) / "qc.parquet" for r in rounds}
    last = verify_chain(status_paths, models, qcs)
    check_usable(last, status_paths[-1], models[last.round])
    pseudo_dir = root / str(last.round) / "pseudo"
    targets = sorted(str(p) for p in inputs if p.parent == pseudo_dir and p.suffix == ".npz")
    if not targets:
        raise BrokenRoundChain(f"no pseudo-masks of the last round ({last.round}) were given")
    return {"round": last.round, "reason": last.reason, "pass_fraction": last.pass_fraction,
            "targets": targets, "qc": str(qcs[last.round]), "init": str(models[last.round]),
            "init_sha256": last.model_sha256, "qc_sha256": last.qc_sha256,
            "statuses": [str(p) for p in status_paths]}


def check_chain_record(record: dict) -> None:
    """Re-check at training time that nothing in the recorded chain changed since it was verified."""
    if file_digest(Path(record["init"])) != record["init_sha256"]:
        raise BrokenRoundChain(f"{record['init']} changed after the round chain was verified; rerun the workflow")
    if file_digest(Path(record["qc"])) != record["qc_sha256"]:
        raise BrokenRoundChain(f"{record['qc']} changed after the round chain was verified; rerun the workflow")
