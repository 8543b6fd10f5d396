"""run_glue_no_trainer.py and its output folder: what it refuses, what it deletes, one run at a time, checkpoints.

* Nothing the script did not write is deleted: a folder holding another run's files (or files the run would
  replace) is refused without --overwrite_output_dir; with it, only what the manifest lists goes.
* An empty --output_dir, a file in the way, a folder that cannot be written, a full disk: one line, status 2.
* One run per folder: a second run exits with status 75 while the first goes on; a killed run blocks nothing.
* Resuming from 'latest' skips damaged checkpoints, with a warning each, and continues exactly.

In-process runs call main(argv) on a tiny DeBERTa-v2; locking, killing and file size limits use real processes.
"""
from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _run_glue_utils import (ACCELERATE, REPO, SCRIPT, accelerate_launch, have_adapters, make_tiny_model, process_env,
                             read_log, read_results, spawn_ranks, write_tiny_glue)

import run_glue_no_trainer as rg
from glue_run import checkpoints
from glue_run.manifest import LOCK_FILE, MANIFEST


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("outdir")
    return make_tiny_model(root / "model"), write_tiny_glue(root / "glue", "rte")


def run_main(tiny, out, *extra, steps: int = 2) -> int:
    model, glue = tiny
    return rg.main(["--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir", str(glue),
                    "--output_dir", str(out), "--seed", "3", "--per_device_train_batch_size", "8",
                    "--learning_rate", "1e-3", "--max_train_steps", str(steps), *map(str, extra)])


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder)."""
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def error_line(capsys) -> str:
    """The run's stderr, which must be exactly one error line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("run_glue_no_trainer.py: error: "), err
    return err[0]


def manifest(out: Path) -> list[str]:
    return json.loads((out / MANIFEST).read_text())["written"]


def assert_manifest_covers(out: Path, others: set[str] = frozenset()) -> None:
    """Every file in `out` is the lock, the manifest, one of `others`, or under a manifest entry; every entry of a
    file or folder written whole exists (no temp names left over)."""
    entries = manifest(out)
    whole = [e for e in entries if not e.endswith("/")]
    assert all((out / e).exists() for e in whole), whole
    for path in out.rglob("*"):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and rel not in {LOCK_FILE, MANIFEST} | set(others):
            assert any(rel == e or rel.startswith(e + "/") for e in whole), rel



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


def test_an_output_folder_that_cannot_be_written_stops_before_loading(tiny, tmp_path, capsys):
    if os.geteuid() == 0:  # root writes anywhere chmod allows nothing; /proc refuses new files even to root
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc")
        parent = Path("/proc")
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
    try:
        assert run_main(tiny, parent / "run_glue_test_out") == 2
        assert f"--output_dir {parent / 'run_glue_test_out'}: cannot write in {parent} (" in error_line(capsys)
        assert not (parent / "run_glue_test_out").exists()
    finally:
        if parent != Path("/proc"):
            parent.chmod(0o755)


def test_something_in_the_way_of_an_output_is_found_before_training(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoints").write_text("a file, not the checkpoint folder")
    before = snapshot(out)
    assert run_main(tiny, out, "--overwrite_output_dir", "--checkpointing_steps", "1") == 2
    assert f"{out / 'checkpoints'} is in the way: this run writes a folder there" in error_line(capsys)
    assert snapshot(out) == before
    (out / "checkpoints").unlink()
    (out / "model.safetensors").mkdir()
    assert run_main(tiny, out, "--overwrite_output_dir") == 2
    assert f"{out / 'model.safetensors'} is in the way: this run writes a file there" in error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]


# ------------------------------------------------------------------------------------------ never delete
def test_another_runs_files_are_refused_then_kept_when_overwriting(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "keep.txt").write_text("the user's notes")
    (out / "rank_pattern.json").write_text('{"mine": true}')
    (out / "ivon_state.pt").write_bytes(b"not the script's")
    (out / "train.log").write_text("what the sweep launcher appends\n")
    before = snapshot(out)

    assert run_main(tiny, out) == 2
    line = error_line(capsys)
    assert "holds files of another run or files this run would replace (rank_pattern.json, ivon_state.pt, " \
           "checkpoints)" in line and "--overwrite_output_dir" in line
    assert snapshot(out) == before  # nothing written, nothing deleted

    # Overwriting deletes only what a run of this script wrote: here nothing; the run writes beside the files.
    assert run_main(tiny, out, "--overwrite_output_dir", "--checkpointing_steps", "1") == 0
    assert {k: v for k, v in snapshot(out).items() if k in before} == before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["keep.txt", "step_1", "step_2"]
    assert_manifest_covers(out, others={"checkpoints/keep.txt", "rank_pattern.json", "ivon_state.pt", "train.log"})
    assert "checkpoints/" not in manifest(out)  # the user made it: it is not this script's to remove

    # The next overwrite removes this script's checkpoints and outputs, and again nothing of the user's.
    assert run_main(tiny, out, "--overwrite_output_dir", steps=1) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["keep.txt"]
    assert {k: v for k, v in snapshot(out).items() if k in before} == before
    assert read_results(out)["train_steps"] == 1


def test_unrelated_files_do_not_stop_a_fresh_run(tiny, tmp_path):
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "plan.md").write_text("seed 3 first")
    (out / "train.log").write_text("=== launched\n")
    before = snapshot(out)
    assert run_main(tiny, out) == 0
    assert {k: v for k, v in snapshot(out).items() if k in before} == before
    assert_manifest_covers(out, others={"notes/plan.md", "train.log"})


@pytest.mark.skipif(not have_adapters(), reason="peft/ivon packages not available yet")
def test_overwrite_removes_the_previous_runs_files_of_another_kind(tiny, tmp_path):
    """An adapter left next to a full fine-tune's model.safetensors would make from_pretrained load the adapter."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "out"
    assert run_main(tiny, out, "--apply_lora", "--lora_r", "2", "--checkpointing_steps", "1") == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(manifest(out))
    (out / "notes.txt").write_text("kept")
    assert run_main(tiny, out, "--overwrite_output_dir", steps=1) == 0
    names = {p.name for p in out.iterdir()}
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "README.md", "checkpoints"}
    assert {"model.safetensors", "config.json", "notes.txt"} <= names and (out / "notes.txt").read_text() == "kept"
    assert_manifest_covers(out, others={"notes.txt"})
    saved = load_file(out / "model.safetensors")
    loaded = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_a_crafted_manifest_deletes_nothing_outside_the_folder(tiny, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's")
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"written": ["../victim.txt", str(victim), "a/../../victim.txt",
                                                           LOCK_FILE, "..", "/"]}))
    assert run_main(tiny, out, "--overwrite_output_dir") == 0
    assert victim.read_text() == "someone else's" and (out / "all_results.json").is_file()


def test_a_planted_lock_symlink_is_not_followed(tiny, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).symlink_to(victim)
    assert run_main(tiny, out) == 2
    assert f"cannot write the outputs in {out}" in error_line(capsys)
    assert victim.read_text() == "someone else's"


def test_latest_without_a_checkpoint_starts_its_own_attempt_over(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(tiny, out) == 0
    (out / "all_results.json").unlink()  # as if killed before the end, with no checkpoint
    (out / "train.log").write_text("the launcher's\n")
    capsys.readouterr()
    assert run_main(tiny, out) == 2  # a fresh run may not take over another run's files
    assert "log.jsonl, run_config.json" in error_line(capsys)
    assert run_main(tiny, out, "--resume_from_checkpoint", "latest", steps=3) == 0  # a preemptible job may
    assert read_results(out)["train_steps"] == 3 and [r["step"] for r in read_log(out) if "lr" in r] == [1, 2, 3]
    assert (out / "train.log").read_text() == "the launcher's\n"


# ------------------------------------------------------------------------------------------ full disk
def _limited_run(tiny, out: Path, max_bytes: int, *extra) -> subprocess.CompletedProcess:
    """The script in a process that may write no file larger than `max_bytes` (RLIMIT_FSIZE: writes beyond fail
    with EFBIG, as they would with ENOSPC on a full disk)."""
    model, glue = tiny
    cmd = [sys.executable, str(SCRIPT), "--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir",
           str(glue), "--output_dir", str(out), "--seed", "3", "--max_train_steps", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO, env=process_env(),
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes)))


@pytest.mark.parametrize("where", ["checkpoint", "outputs"])
def test_a_full_disk_is_one_line(tiny, tmp_path, where):
    out = tmp_path / "out"
    extra = ["--checkpointing_steps", "1"] if where == "checkpoint" else []
    res = _limited_run(tiny, out, 60_000, *extra)  # the tiny model's weights take ~110 kB
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"run_glue_no_trainer.py: error: cannot write the outputs in {out}: ") and \
        "File too large" in last
    assert not (out / "all_results.json").exists()
    if where == "checkpoint":
        assert "model.pt" in last and not list((out / "checkpoints").iterdir())  # no step_1, no temp folder
    else:
        assert "model.safetensors" not in {p.name for p in out.iterdir()}
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name not in (LOCK_FILE, MANIFEST)]


# ------------------------------------------------------------------------------------------ one run per folder
def test_a_held_lock_exits_75_and_writes_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / LOCK_FILE, "w") as held:
        held.write("pid 4242 on elsewhere\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        before = snapshot(out)
        assert run_main(tiny, out) == rg.EXIT_BUSY == 75
        line = error_line(capsys)
        assert f"{out} is in use by another run (pid 4242 on elsewhere)" in line
        assert snapshot(out) == before
    # The holder is gone; its file, naming it, stays and does not block.
    assert (out / LOCK_FILE).read_text() == "pid 4242 on elsewhere\n"
    assert run_main(tiny, out) == 0
    assert (out / LOCK_FILE).read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"


def _cmd(tiny, out: Path, *extra) -> list[str]:
    model, glue = tiny
    return [sys.executable, str(SCRIPT), "--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir",
            str(glue), "--output_dir", str(out), "--seed", "11", "--per_device_train_batch_size", "8",
            "--max_train_steps", "12", "--checkpointing_steps", "3", *extra]


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what}"
        time.sleep(0.05)


def test_a_second_run_exits_75_while_the_first_goes_on(tiny, tmp_path):
    out = tmp_path / "out"
    first_err = open(tmp_path / "first.err", "w")  # a file, not a pipe nobody reads until the end
    first = subprocess.Popen(_cmd(tiny, out), cwd=REPO, env=process_env(RUN_GLUE_DEBUG_STEP_SLEEP="0.5"),
                             stdout=subprocess.DEVNULL, stderr=first_err)
    _wait_for(first, lambda: (out / "log.jsonl").is_file() and (out / "log.jsonl").read_text(), "first update")
    first.send_signal(signal.SIGSTOP)  # holds its lock, mid-run, however long the second takes to start
    try:
        second = subprocess.run(_cmd(tiny, out), capture_output=True, text=True, timeout=180, cwd=REPO,
                                env=process_env())
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 75, second.stderr[-2000:]
    assert second.stderr.strip().splitlines() == [
        f"run_glue_no_trainer.py: error: {out} is in use by another run (pid {first.pid} on {socket.gethostname()}); "
        "wait for it to end or choose another --output_dir"]
    assert first.wait(timeout=240) == 0, (tmp_path / "first.err").read_text()[-2000:]
    first_err.close()
    assert [r["step"] for r in read_log(out) if "lr" in r] == list(range(1, 13))
    assert read_results(out)["train_steps"] == 12


def test_a_killed_run_leaves_no_lock(tiny, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(tiny, out), cwd=REPO, env=process_env(RUN_GLUE_DEBUG_STEP_SLEEP="0.25"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(proc, lambda: (out / "checkpoints" / "step_6").is_dir(), "checkpoint")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert (out / LOCK_FILE).read_text().startswith(f"pid {proc.pid} on ")  # a stale file, no live lock
    res = subprocess.run(_cmd(tiny, out, "--resume_from_checkpoint", "latest"), capture_output=True, text=True,
                         timeout=240, cwd=REPO, env=process_env())
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stdout + res.stderr
    assert [r["step"] for r in read_log(out) if "lr" in r] == list(range(1, 13))


def test_two_processes_stop_together_on_a_busy_folder(tiny, tmp_path):
    """Only the main process locks; the other learns the verdict from it instead of waiting for it forever. Started
    by hand (no launcher that would kill the rest once one process exits), each must exit 75 on its own."""
    out = tmp_path / "out"
    out.mkdir()
    with open(out / LOCK_FILE, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = spawn_ranks(_cmd(tiny, out)[2:], 2, timeout=180, stdout=subprocess.DEVNULL)
    errs = [p.stderr for p in procs]
    assert [p.returncode for p in procs] == [75, 75], errs
    assert errs[0].strip().splitlines() == [f"run_glue_no_trainer.py: error: {out} is in use by another run; wait "
                                            "for it to end or choose another --output_dir"] and not errs[1].strip()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


@pytest.mark.skipif(not ACCELERATE.exists(), reason="no accelerate CLI")
def test_two_process_checkpoints_are_complete(tiny, tmp_path):
    """Under accelerate launch, the sync points of a checkpoint (every RNG file in place, then the marker)."""
    out = tmp_path / "out"
    res = accelerate_launch(_cmd(tiny, out, "--per_device_train_batch_size", "4", "--max_train_steps", "4",
                                 "--checkpointing_steps", "2")[2:], 2, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    for step in (2, 4):
        ckpt = out / "checkpoints" / f"step_{step}"
        marker = json.loads((ckpt / checkpoints.CHECKPOINT_MARKER).read_text())["files"]
        assert {"rng.pt", "rng_rank1.pt", "model.pt", "state.json"} <= set(marker)
        assert checkpoints.checkpoint_problem(ckpt) is None
    assert_manifest_covers(out)


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
    "no marker": lambda d: (d / checkpoints.CHECKPOINT_MARKER).unlink(),
    "unreadable marker": lambda d: (d / checkpoints.CHECKPOINT_MARKER).write_text('{"files": '),
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
    assert checkpoints.checkpoint_problem(out / "checkpoints" / "step_4") is None  # rewritten whole


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
    assert files == ["args.json", "complete.json", "model.pt", "optimizer.pt", "rng.pt", "scheduler.pt", "state.json"]
    assert {str(tmp / f) for f in files} <= set(synced)
    assert synced.index(str(tmp / "complete.json")) > max(synced.index(str(tmp / f)) for f in files
                                                          if f != "complete.json")
    assert synced[-1] == str(tmp)  # the folder itself, after its last file
    assert ("fsync", str(root)) in events[rename:]
    marker = json.loads((final / "complete.json").read_text())["files"]
    assert marker == {f: (final / f).stat().st_size for f in files if f != "complete.json"}
