"""run_glue_no_trainer.py and its output folder: what it refuses, checkpoints.

* An empty --output_dir, or one that is or goes through a file: one line, status 2.
* Resuming from 'latest' skips damaged checkpoints, with a warning each, and continues exactly.

In-process runs call main(argv) on a tiny DeBERTa-v2.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from _run_glue_utils import load_script, make_tiny_model, read_log, read_results, write_tiny_glue

rg = load_script()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("outdir")
    return make_tiny_model(root / "model"), write_tiny_glue(root / "glue", "rte")


def run_main(tiny, out, *extra, steps: int = 2) -> int:
    model, glue = tiny
    return rg.main(["--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir", str(glue),
                    "--output_dir", str(out), "--seed", "3", "--per_device_train_batch_size", "8",
                    "--learning_rate", "1e-3", "--max_train_steps", str(steps), *map(str, extra)])


def error_line(capsys) -> str:
    """The run's stderr, which must be exactly one error line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("run_glue_no_trainer.py: error: "), err
    return err[0]


# ------------------------------------------------------------------------------------------ the output path
def test_empty_output_dir_is_refused_and_the_current_directory_untouched(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for value in ("", "  "):
        assert run_main(tiny, value) == 2
        assert "--output_dir is empty" in error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_an_output_path_through_a_file_is_refused(tiny, tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    assert run_main(tiny, tmp_path / "f") == 2
    assert error_line(capsys).endswith(f"--output_dir {tmp_path / 'f'} exists and is not a directory")
    assert run_main(tiny, tmp_path / "f" / "run") == 2
    assert f"{tmp_path / 'f'} is in the way (not a directory)" in error_line(capsys)
    assert (tmp_path / "f").read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["f"]


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """A finished 4-update run with a checkpoint after every update, and its log and results."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert run_main(tiny, out, "--checkpointing_steps", "1", "--eval_steps", "2", "--eval_after_epochs", "0",
                    steps=4) == 0
    return out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {  # what a kill, a full disk or a crash could leave of a checkpoint folder
    "empty folder": lambda d: (shutil.rmtree(d), d.mkdir()),
    "no marker": lambda d: (d / rg.CHECKPOINT_MARKER).unlink(),
    "unreadable marker": lambda d: (d / rg.CHECKPOINT_MARKER).write_text('{"files": '),
    "no state.json": lambda d: (d / "state.json").unlink(),
    "truncated state.json": lambda d: _truncate(d / "state.json"),
    "state.json not JSON": lambda d: (d / "state.json").write_bytes(b"{" * (d / "state.json").stat().st_size),
    "truncated model.pt": lambda d: _truncate(d / "model.pt"),
    "no optimizer.pt": lambda d: (d / "optimizer.pt").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE) + ["two damaged"])
def test_latest_skips_damaged_checkpoints_and_resumes_exactly(tiny, reference, tmp_path, capsys, damage):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "all_results.json").unlink()
    damaged = ["step_4", "step_3"] if damage == "two damaged" else ["step_4"]
    for i, name in enumerate(damaged):
        DAMAGE[list(DAMAGE)[i] if damage == "two damaged" else damage](out / "checkpoints" / name)
    capsys.readouterr()
    assert run_main(tiny, out, "--checkpointing_steps", "1", "--eval_steps", "2", "--eval_after_epochs", "0",
                    "--resume_from_checkpoint", "latest", steps=4) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("run_glue_no_trainer.py: warning:")]
    assert len(warnings) == len(damaged)
    for line, name in zip(warnings, damaged):
        assert line.startswith(f"run_glue_no_trainer.py: warning: skipping checkpoint {out / 'checkpoints' / name}: ")
    resumed_from = json.loads((out / "run_config.json").read_text())["resumed_from"]
    assert resumed_from == str(out / "checkpoints" / f"step_{4 - len(damaged)}")
    without_runtime = lambda r: {k: v for k, v in r.items() if k != "train_runtime_s"}  # noqa: E731
    assert without_runtime(read_results(out)) == without_runtime(read_results(reference))
    assert read_log(out) == read_log(reference)
    assert rg._checkpoint_problem(out / "checkpoints" / "step_4") is None  # rewritten whole


def test_checkpoint_files_reach_the_disk_before_the_marker_and_the_rename(tiny, tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    assert run_main(tiny, out, "--checkpointing_steps", "1", steps=1) == 0
    root, tmp, final = out / "checkpoints", out / "checkpoints" / ".tmp_step_1", out / "checkpoints" / "step_1"
    rename = events.index(("replace", str(tmp), str(final)))
    synced = [e[1] for e in events[:rename] if e[0] == "fsync"]
    files = sorted(p.name for p in final.iterdir())
    assert files == ["complete.json", "model.pt", "optimizer.pt", "rng.pt", "scheduler.pt", "state.json"]
    assert {str(tmp / f) for f in files} <= set(synced)
    assert synced.index(str(tmp / "complete.json")) > max(synced.index(str(tmp / f)) for f in files
                                                          if f != "complete.json")
    assert synced[-1] == str(tmp)  # the folder itself, after its last file
    assert ("fsync", str(root)) in events[rename:]
    marker = json.loads((final / "complete.json").read_text())["files"]
    assert marker == {f: (final / f).stat().st_size for f in files if f != "complete.json"}
