"""Checkpoints: the position in training (`TrainState`), writing a complete checkpoint, finding the one to
resume, and restoring it with the flags it was trained with.

A checkpoint is complete only with complete.json, written last (every file with its size, each fsynced, then the
folder renamed into place); 'latest' skips any other with a one-line warning.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from .errors import UsageError, agree, output_error
from .files import fsync_dir, load_torch_file, save_file
from .manifest import made_dirs, record
from .rng import read_rng, rng_file, rng_states
from .schedule import steps_with_metric, upgrade_metric_scheduler_state


@dataclasses.dataclass
class TrainState:
    """Everything about the position in training that a checkpoint must restore (JSON-serialisable)."""
    seed: int
    completed_steps: int = 0
    epoch: int = 0
    batches_done: int = 0           # micro-batches consumed in `epoch`
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    best_eval: dict = dataclasses.field(default_factory=dict)
    last_eval: dict = dataclasses.field(default_factory=dict)
    last_eval_step: int | None = None
    log_lines: int = 0
    train_runtime_s: float = 0.0
    train_batch_size: int | None = None  # global batch (per device x processes); None in older checkpoints


CHECKPOINT_MARKER = "complete.json"  # written last: every other file of the checkpoint with its size


def checkpoint_dirs(out: Path) -> list[Path]:
    """Every OUT/checkpoints/step_<n> folder, complete or not, oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and d.name.startswith("step_") and d.name[5:].isdigit()]
    return sorted(found, key=lambda d: int(d.name[5:]))


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint folder `path` cannot be resumed (None: it is complete): no completion marker, a file it
    lists missing or of another size (truncated), or a state.json that is not this script's training state."""
    try:
        if not any(path.iterdir()):
            return "empty folder"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    try:
        files = json.loads((path / CHECKPOINT_MARKER).read_text())["files"]
        if not (isinstance(files, dict) and "state.json" in files and all(
                isinstance(n, str) and "/" not in n and n not in ("", ".", "..") and isinstance(size, int)
                for n, size in files.items())):
            raise ValueError
    except FileNotFoundError:
        return f"no {CHECKPOINT_MARKER}: it was never finished"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{CHECKPOINT_MARKER} is unreadable"
    for name, size in files.items():
        if not (path / name).is_file():
            return f"{name} is missing"
        if (path / name).stat().st_size != size:
            return f"{name} has {(path / name).stat().st_size} bytes, {size} were written"
    try:
        state = TrainState(**json.loads((path / "state.json").read_text()))
        if not (isinstance(state.seed, int) and isinstance(state.completed_steps, int)):
            raise TypeError
    except (OSError, ValueError, TypeError):
        return "state.json does not hold a training state"
    return None


def complete_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (`checkpoint_problem` finds none), oldest first."""
    return [d for d in checkpoint_dirs(out) if checkpoint_problem(d) is None]


def save_checkpoint(run, state: TrainState) -> Path:
    """Write OUT/checkpoints/step_<n>/ (trainable weights, optimizer, scheduler, allocator, RNG, data position).

    Everything goes into a hidden temp folder first, each file fsynced; complete.json, listing every file with
    its size, is written last and fsynced with the folder, which is then renamed. So a kill or a power cut at
    any moment leaves either a complete checkpoint or one that `checkpoint_problem` rejects. Several processes:
    every process writes its own RNG state into the temp folder; weights, optimizer, scheduler and allocator
    state are identical on all of them (DDP and IVON's sync make every update the same), so the main process
    writes the single copy. A write error (a full disk) stops every process alike, and the temp folder goes.
    """
    acc = run.accelerator
    main = acc.is_main_process
    root = run.out / "checkpoints"
    final = root / f"step_{state.completed_steps}"
    tmp, old = root / f".tmp_{final.name}", root / f".old_{final.name}"  # fixed names: every process finds tmp
    error = None
    if main:
        try:
            record(run.out, add=made_dirs(run.out, Path("checkpoints", final.name)) +
                   [f"checkpoints/{p.name}" for p in (final, tmp, old)])
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
            tmp.mkdir()
        except OSError as e:
            error = output_error(run.out, e)
    agree(acc, error)
    try:
        try:
            save_file(tmp / rng_file(acc.process_index), rng_states(), fsync=True)
            if main:
                model = run.peft_model
                weights = model.state_dict() if run.kind == "full" else \
                    {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
                save_file(tmp / "model.pt", weights, fsync=True)
                save_file(tmp / "optimizer.pt", run.optimizer.state_dict(), fsync=True)
                save_file(tmp / "scheduler.pt", run.scheduler.state_dict(), fsync=True)
                if run.adaptive:
                    save_file(tmp / "allocator.pt", model.base_model.allocator_state_dict(), fsync=True)
                if run.start_means is not None:
                    save_file(tmp / "start_means.pt", run.start_means, fsync=True)
                if acc.scaler is not None:
                    save_file(tmp / "scaler.pt", acc.scaler.state_dict(), fsync=True)
                save_file(tmp / "args.json", json.dumps(run.resolved.recorded_args(run.args), default=str).encode(),
                          fsync=True)
                save_file(tmp / "state.json", json.dumps(dataclasses.asdict(state)).encode(), fsync=True)
        except OSError as e:
            error = output_error(run.out, e)
        agree(acc, error)  # every RNG file is in place
        if main:
            try:
                sizes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
                save_file(tmp / CHECKPOINT_MARKER, json.dumps({"files": sizes}).encode(), fsync=True)
                fsync_dir(tmp)
                os.chmod(tmp, 0o755)
                if final.exists():  # e.g. an epoch checkpoint at the step of a step checkpoint: replace it
                    os.replace(final, old)
                    os.replace(tmp, final)
                    shutil.rmtree(old)
                else:
                    os.replace(tmp, final)
                fsync_dir(root)
                record(run.out, drop=[f"checkpoints/{tmp.name}", f"checkpoints/{old.name}"])
            except OSError as e:
                error = output_error(run.out, e)
        agree(acc, error)
    except UsageError:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# batch, since the global batch (per process x processes) is what must match and load_checkpoint compares it.
# Everything else (task, data, model, method, criterion, ranks, schedules, optimizer settings, seed,
# evaluation) must match the checkpoint, or the resumed run would silently be another experiment.
RESUME_MAY_CHANGE = frozenset({"resume_from_checkpoint", "overwrite_output_dir", "output_dir", "with_tracking",
                               "report_to", "project_prefix", "checkpointing_steps", "push_to_hub", "hub_model_id",
                               "hub_token", "per_device_train_batch_size"})


def check_resumed_args(recorded: dict, path: Path) -> None:
    """Refuse to resume checkpoint `path` with flags other than those it was trained with (RESUME_MAY_CHANGE
    excepted; an omitted --seed means the checkpoint's). Checkpoints of older versions, without args.json,
    are compared with the run_config.json of their run folder when there is one."""
    saved_file = path / "args.json"
    if saved_file.is_file():
        saved = json.loads(saved_file.read_text())
    elif (path.parent.parent / "run_config.json").is_file():
        saved = json.loads((path.parent.parent / "run_config.json").read_text()).get("args", {})
    else:
        return
    now = json.loads(json.dumps(recorded, default=str))
    differ = sorted(k for k in now.keys() | saved.keys() if k not in RESUME_MAY_CHANGE and now.get(k) != saved.get(k)
                    and not (k == "seed" and now.get(k) is None))
    if differ:
        shown = ", ".join(f"--{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in differ[:4])
        raise UsageError(f"checkpoint {path} was trained with other flags ({shown}{', ...' if len(differ) > 4 else ''}"
                         "); resume with the original flags, or start over with --overwrite_output_dir")


def load_checkpoint(run, path: Path) -> TrainState:
    """Restore a checkpoint written by save_checkpoint; the RNG state is restored by the caller, last."""
    check_resumed_args(run.resolved.recorded_args(run.args), path)
    state = TrainState(**json.loads((path / "state.json").read_text()))
    batch = run.args.per_device_train_batch_size * run.accelerator.num_processes
    if state.train_batch_size is not None and state.train_batch_size != batch:
        raise UsageError(f"checkpoint {path} was trained with a global batch of {state.train_batch_size}, this run's "
                         f"is {batch} (--per_device_train_batch_size {run.args.per_device_train_batch_size} x "
                         f"{run.accelerator.num_processes} processes); resume with the same global batch")
    model = run.peft_model
    # torch.load restores only "cpu" (not the "cpu:<rank>" devices of CPU processes) or an accelerator device
    device = "cpu" if run.accelerator.device.type == "cpu" else run.accelerator.device
    weights = load_torch_file(path / "model.pt", map_location=device)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or (trainable - set(weights)):
        raise UsageError(f"checkpoint {path} does not match the model (missing {sorted(trainable - set(weights))[:3]},"
                         f" unexpected {unexpected[:3]}); resume with the flags of the original run")
    # IVON keeps its hess/momentum buffers in param_groups, which torch does not move; AdamW wants CPU step counts.
    opt_device = device if run.ivon is not None else "cpu"
    run.optimizer.load_state_dict(load_torch_file(path / "optimizer.pt", map_location=opt_device))
    scheduler_state = load_torch_file(path / "scheduler.pt")
    if steps_with_metric(run.args):
        scheduler_state = upgrade_metric_scheduler_state(scheduler_state)
    run.scheduler.load_state_dict(scheduler_state)
    if run.adaptive:
        model.base_model.load_allocator_state_dict(load_torch_file(path / "allocator.pt", map_location=device))
    if run.ivon is not None and (path / "start_means.pt").is_file():
        run.start_means = load_torch_file(path / "start_means.pt")
    if (path / "scaler.pt").exists() and run.accelerator.scaler is not None:
        run.accelerator.scaler.load_state_dict(load_torch_file(path / "scaler.pt"))
    run.resume_rng = read_rng(run, path)
    return state


def resume_point(args, out: Path) -> Path | None:
    """The checkpoint folder to resume from: --resume_from_checkpoint PATH, or for 'latest' the newest complete
    one, skipping newer ones that are not (a one-line warning each); None when there is none, so that a
    preemptible job can always pass 'latest'. Main process only (see outdir.claim_output_dir)."""
    if args.resume_from_checkpoint == "latest":
        skipped = False
        for path in reversed(checkpoint_dirs(out)):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            print(f"run_glue_no_trainer.py: warning: skipping checkpoint {path}: {problem}; falling back to the one "
                  "before", file=sys.stderr)
            skipped = True
        if skipped:
            print("run_glue_no_trainer.py: warning: no complete checkpoint left; starting from the beginning",
                  file=sys.stderr)
        return None
    if args.resume_from_checkpoint is None:
        return None
    # A folder named explicitly is used as it is (one of an older version has no completion marker); the
    # loaders name any file in it that is truncated or not what it should be.
    path = Path(args.resume_from_checkpoint)
    if not (path / "state.json").is_file():
        raise UsageError(f"--resume_from_checkpoint {path} is not a checkpoint folder (no state.json)")
    try:
        if not isinstance(json.loads((path / "state.json").read_text())["seed"], int):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"--resume_from_checkpoint {path}: state.json does not hold a training state") from None
    return path
