"""Guarantees on files someone else wrote: loading a checkpoint or an adapter folder never runs code from it.

Every torch file the script reads (checkpoint files, an adapter's IVON state) is loaded with weights_only=True; a
crafted pickle is refused with one line and exit status 2, and its payload never runs.
"""
from __future__ import annotations

import pathlib

import pytest
import torch

from _run_glue_utils import have_adapters, make_tiny_model, write_tiny_glue
import run_glue_no_trainer as rg

pytestmark = pytest.mark.skipif(not have_adapters(), reason="peft/ivon packages not available yet")
VILORA = ["--apply_lora", "--lora_type", "vilora", "--adalora_init_r", "3", "--adalora_target_r", "2",
          "--adalora_tinit", "1", "--adalora_tfinal", "1", "--adalora_delta_t", "1", "--learning_rate", "0.05"]


class Payload:
    """Unpickling this creates the file `marker`: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 4-update VILoRA run with checkpoints at updates 2 and 4."""
    root = tmp_path_factory.mktemp("safety")
    model, glue = make_tiny_model(root / "model"), write_tiny_glue(root / "glue", "rte")
    out = root / "run"
    assert _run(model, glue, out, "--checkpointing_steps", "2") == 0
    return model, glue, out


def _run(model, glue, out, *extra):
    return rg.main(["--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir", str(glue), "--output_dir",
                    str(out), "--seed", "1", "--per_device_train_batch_size", "8", "--max_train_steps", "4", *VILORA,
                    *map(str, extra)])


@pytest.mark.parametrize("victim", ["model.pt", "optimizer.pt", "scheduler.pt", "allocator.pt", "rng.pt",
                                    "start_means.pt"])
def test_a_crafted_checkpoint_file_is_refused_without_running_it(trained, tmp_path, capsys, victim):
    model, glue, out = trained
    import shutil
    ckpt = tmp_path / "step_2"
    shutil.copytree(out / "checkpoints" / "step_2", ckpt)
    marker = tmp_path / "pwned"
    torch.save(Payload(marker), ckpt / victim)
    capsys.readouterr()
    assert _run(model, glue, tmp_path / "resumed", "--resume_from_checkpoint", ckpt) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert not marker.exists()
    assert err.startswith("run_glue_no_trainer.py: error: ") and victim in err and "refusing to load" in err
    assert not (tmp_path / "resumed").exists()  # refused before anything was written


def test_a_crafted_ivon_state_in_an_adapter_folder_is_refused(trained, tmp_path, capsys):
    model, glue, out = trained
    import shutil
    adapter = tmp_path / "adapter"
    shutil.copytree(out, adapter, ignore=shutil.ignore_patterns("checkpoints"))
    marker = tmp_path / "pwned"
    torch.save({"ess": 48.0, "params": Payload(marker)}, adapter / "ivon_state.pt")
    for extra in ([], ["--eval_only", "--ivon_infer_mc_samples", "2"]):
        capsys.readouterr()
        assert _run(model, glue, tmp_path / "next", "--lora_path", adapter, *extra) == 2
        assert "refusing to load" in capsys.readouterr().err and not marker.exists()


def test_a_truncated_checkpoint_file_is_one_line(trained, tmp_path, capsys):
    model, glue, out = trained
    import shutil
    ckpt = tmp_path / "step_2"
    shutil.copytree(out / "checkpoints" / "step_2", ckpt)
    data = (ckpt / "optimizer.pt").read_bytes()
    (ckpt / "optimizer.pt").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert _run(model, glue, tmp_path / "resumed", "--resume_from_checkpoint", ckpt) == 2
    assert "optimizer.pt: cannot be read" in capsys.readouterr().err


def test_resuming_with_other_training_flags_is_refused(trained, tmp_path, capsys):
    """A checkpoint is resumed only with the flags it was trained with (reporting flags may change)."""
    model, glue, out = trained
    ckpt = out / "checkpoints" / "step_2"
    for flags, named in ((["--learning_rate", "0.1"], "--learning_rate 0.05 -> 0.1"),
                         (["--vilora_criterion", "mean"], "--vilora_criterion 'SNR_mean_abs' -> 'mean'"),
                         (["--adalora_target_r", "1"], "--adalora_target_r 2 -> 1")):
        capsys.readouterr()
        # argparse keeps the last value of a repeated flag, so these override VILORA's
        assert _run(model, glue, tmp_path / "resumed", "--resume_from_checkpoint", ckpt, *flags) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "trained with other flags" in err and named in err, err
        assert not (tmp_path / "resumed").exists()
    assert _run(model, glue, tmp_path / "resumed", "--resume_from_checkpoint", ckpt, "--checkpointing_steps", "1") == 0
