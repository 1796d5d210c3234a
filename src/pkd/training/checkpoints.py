"""Checkpoints: the best model saved atomically, the loop's state, accelerate's
save_state/load_state, and the newest --save-total-limit kept."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pkd.errors import PkdError
from pkd.fsio import replace_dir, staged_dir
from pkd.training.runlog import RunStats

logger = logging.getLogger(__name__)


def save_model(model, tokenizer, path: Path) -> None:
    """save_pretrained into a temporary dir, then swap it in (readers never see half a model;
    safetensors' 0600 files get the umask's modes on the way, see `pkd.fsio`)."""
    with staged_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


STATE_FILE = "trainer_state.json"  # the loop's part of a checkpoint


@dataclass
class LoopState:
    """Where the loop is: saved in each checkpoint (trainer_state.json), restored on resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # whole passes over the training set done
    batches_in_epoch: int = 0  # micro-batches of the current pass done (skipped on resume)
    best: dict | None = None  # the history record with the best main metric
    history: list[dict] = field(default_factory=list)  # {step, epoch, metrics} per evaluation
    stats: RunStats = field(default_factory=RunStats)  # metrics.json's counts and shares

    @classmethod
    def load(cls, checkpoint: Path) -> LoopState:
        """Read a checkpoint's trainer_state.json (one without `stats`, from before pkd kept
        them, restarts the counts).

        Raises:
            ValueError: it is not JSON or lacks a field.
        """
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        missing = [
            f.name
            for f in fields(cls)
            if f.name != "stats" and (not isinstance(saved, dict) or f.name not in saved)
        ]
        if missing:
            raise ValueError(f"{STATE_FILE} lacks {', '.join(missing)}")
        stats = saved.get("stats", {})
        if not isinstance(stats, dict) or set(stats) - {f.name for f in fields(RunStats)}:
            raise ValueError(f"{STATE_FILE}: its stats are not pkd's RunStats")
        loop = {f.name: saved[f.name] for f in fields(cls) if f.name != "stats"}
        return cls(**loop, stats=RunStats(**stats))

    def save(self, checkpoint: Path) -> None:
        (checkpoint / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Half-written ones are hidden `.tmp` dirs."""
    root = output / "checkpoints"
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    accelerator, output: Path, state: LoopState, limit: int, hooks: Sequence = ()
) -> Path:
    """accelerate's save_state (weights, optimizer, scheduler, RNG) + the loop state, atomically;
    keeps the newest `limit` checkpoints, then runs the hooks' `on_checkpoint`."""
    root = output / "checkpoints"
    final = root / f"step-{state.step}"
    tmp = root / f".step-{state.step}.tmp"  # one name every process writes its part into
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.save(tmp)
        replace_dir(tmp, final)
        for old in checkpoints(output)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    for h in hooks:
        h.on_checkpoint(state, final)
    return final


def resume(accelerator, checkpoint: Path) -> LoopState:
    """Restore weights, optimizer, schedule and RNG (accelerate), and the loop state.

    Raises:
        PkdError: the checkpoint cannot be read; optimizer/RNG pickles go through
            torch.load(weights_only=True), so no code in them runs.
    """
    try:
        accelerator.load_state(str(checkpoint))
        state = LoopState.load(checkpoint)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PkdError(f"{checkpoint}: cannot load the checkpoint ({first})") from None
    logger.info("resumed from %s at step %d", checkpoint, state.step)
    return state
