"""Logging belongs to the host: the library leaves it alone, the `pkd` command sets its own."""

from __future__ import annotations

import contextlib
import logging

import transformers
from transformers.utils import logging as hf_logging

import pkd
from pkd.cli import run
from pkd.config.runs import FinetuneRunConfig
from pkd.config.sections import DataConfig, TrainConfig


@contextlib.contextmanager
def bare_host():
    """A host that configured nothing (no root handlers, not even pytest's, which it adds per
    test phase) and left transformers at its defaults; everything is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    accelerate = logging.getLogger("accelerate").level
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    root.handlers.clear()
    root.setLevel(logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.NOTSET)
    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("accelerate").setLevel(accelerate)
        hf_logging.set_verbosity(verbosity)
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def _state(root: logging.Logger) -> dict:
    return {
        "root handlers": list(root.handlers),
        "root level": root.level,
        "accelerate level": logging.getLogger("accelerate").level,
        "transformers verbosity": hf_logging.get_verbosity(),
        "transformers bars": hf_logging.is_progress_bar_enabled(),
    }


def test_library_calls_leave_the_hosts_logging_alone(tiny_bert, sst2_dir, tmp_path):
    data = DataConfig(task="sst2", data_dir=str(sst2_dir), max_length=16, max_eval_samples=8)
    cfg = FinetuneRunConfig(
        model=str(tiny_bert),
        output=str(tmp_path / "run"),
        data=data,
        train=TrainConfig(max_steps=1, batch_size=8, quiet=True),
    )
    with bare_host() as root:
        before = _state(root)
        pkd.finetune(cfg)
        after_finetune = _state(root)
        pkd.evaluate(str(tmp_path / "run"), data)
        after_evaluate = _state(root)
    assert after_finetune == before
    assert after_evaluate == before
    assert before["transformers verbosity"] == transformers.logging.WARNING


def test_the_command_line_configures_logging(capsys):
    with bare_host() as root:
        assert run(["presets"]) == 0
        after = _state(root)
    assert after["transformers verbosity"] == transformers.logging.ERROR
    assert not after["transformers bars"]
    assert after["accelerate level"] == logging.WARNING
    assert [type(h) for h in after["root handlers"]] == [logging.StreamHandler]
    assert after["root level"] == logging.WARNING  # `presets` shows warnings only
