"""The output folder: one run at a time (`OutputLock`), checked before anything is loaded (`claim_output_dir`)
and again under the lock before the first write (`prepare_output_dir`), deleting only what the manifest lists.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import socket
import sys
import tempfile
from pathlib import Path

from .checkpoints import checkpoint_dirs, resume_point
from .errors import AlreadyFinished, OutputDirBusy, UsageError, agree, output_error, stop_together
from .files import write_atomic, write_json
from .manifest import LOCK_FILE, record, recorded, remove_recorded
from .outputs import JsonlLog, run_config

# Names this script writes in an output folder (its own and save_pretrained's for models and tokenizers). A folder
# holding one of them belongs to another run, or would lose a file, unless --overwrite_output_dir says otherwise.
OUTPUT_NAMES = ("all_results.json", "log.jsonl", "run_config.json", "rank_pattern.json", "ivon_state.pt",
                "checkpoints", "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md",
                "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json", "chat_template.jinja", "vocab.txt", "vocab.json", "merges.txt", "spm.model",
                "sentencepiece.bpe.model")


class OutputLock:
    """An exclusive flock on OUT/.lock, taken by the main process before it writes anything in OUT and held until
    the run ends. The OS drops a flock when its process dies, so a killed run leaves no stale lock: its file stays,
    naming the last holder, but only a live holder blocks."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def acquire(self, out: Path, create: bool) -> None:
        """Lock OUT/.lock, creating it if `create` (without: a missing file means no run holds it). Raises
        OutputDirBusy if another process holds it, OSError if it cannot be opened (e.g. it is a symlink)."""
        if self.fd is not None:
            return
        path = out / LOCK_FILE
        try:  # O_NOFOLLOW: a planted symlink must not make this run truncate someone else's file
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0), 0o666)  # umask decides
        except (FileNotFoundError, PermissionError):
            if create:
                raise
            return  # no run has used the folder, or it cannot be written (which check_writable reports)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = " ".join(os.pread(fd, 200, 0).decode(errors="replace").split())
            os.close(fd)
            raise OutputDirBusy(f"{out} is in use by another run{f' ({holder})' if holder else ''}; wait for it to "
                                "end or choose another --output_dir") from None
        except OSError as e:  # a filesystem without locks: go on, but say so
            os.close(fd)
            print(f"run_glue_no_trainer.py: warning: cannot lock {path} ({e.strerror}); nothing stops another run "
                  "from using this folder at the same time", file=sys.stderr)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Unlock (the file stays: deleting it would let two runs lock two different files)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def check_writable(out: Path) -> None:
    """Create and remove a temp file where OUT is (or where it will be made), so that a folder this run cannot
    write in stops it now, in one line, rather than after training."""
    base = next(p for p in (out, *out.parents) if p.exists())
    try:
        fd, tmp = tempfile.mkstemp(dir=base, prefix=".run_glue_write_test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UsageError(f"--output_dir {out}: cannot write in {base} ({e.strerror})") from None


def continues(out: Path, resume: Path | None) -> bool:
    """True when the run resumes a checkpoint of OUT itself, i.e. continues the run whose files OUT holds."""
    return resume is not None and resume.resolve().parent == (out / "checkpoints").resolve()


def check_output_dir(args: argparse.Namespace, out: Path, resume: Path | None) -> None:
    """May this run write in OUT? Deletes nothing; raises AlreadyFinished (a finished run, without
    --overwrite_output_dir) or UsageError:

    * a run that does not continue OUT's own checkpoint, without --overwrite_output_dir, refuses a folder
      holding files of another run or files it would replace: step folders, what the manifest lists, and
      `OUTPUT_NAMES`. Unrelated files (e.g. the sweep launcher's train.log) are fine, and kept. With 'latest'
      and no complete checkpoint, what the manifest lists is this run's own earlier attempt: it starts over;
    * something in the way that would stay in the way (a file named checkpoints, a folder named log.jsonl).
    """
    if not out.is_dir():
        return
    if (out / "all_results.json").exists() and not args.overwrite_output_dir:
        raise AlreadyFinished(f"{out} already holds finished results (all_results.json); skipping. "
                              "Pass --overwrite_output_dir to run again.")
    entries = recorded(out)
    starts_over = not continues(out, resume)
    if starts_over and not args.overwrite_output_dir:
        if args.resume_from_checkpoint is None and checkpoint_dirs(out):
            raise UsageError(f"{out} holds checkpoints of an unfinished run; pass --resume_from_checkpoint latest "
                             "to continue it or --overwrite_output_dir to start over")
        own = {e.rstrip("/") for e in entries} if args.resume_from_checkpoint == "latest" else set()
        names = dict.fromkeys([e for e in entries if not e.endswith("/")] + list(OUTPUT_NAMES))
        found = [n for n in names if n not in own and os.path.lexists(out / n)]
        if found:
            raise UsageError(f"{out} holds files of another run or files this run would replace "
                             f"({', '.join(found[:4])}{', ...' if len(found) > 4 else ''}); pass "
                             "--overwrite_output_dir to replace them (only what this script wrote is deleted) or "
                             "choose another --output_dir")
    going = {e.rstrip("/") for e in entries} if starts_over else set()
    for name in OUTPUT_NAMES:
        path = out / name
        if name == "checkpoints" and args.checkpointing_steps is None:
            continue
        if name not in going and os.path.lexists(path) and path.is_dir() != (name == "checkpoints"):
            raise UsageError(f"{path} is in the way: this run writes a {'folder' if name == 'checkpoints' else 'file'}"
                             " there; move it or choose another --output_dir")


def claim_output_dir(args: argparse.Namespace, out: Path, acc, lock: OutputLock) -> Path | None:
    """Before anything is loaded, on the main process: lock OUT if it has a lock file (a run using OUT made one
    before writing anything else), check that it can be written (`check_writable`) and that this run may use
    it (`check_output_dir`), and pick the checkpoint to resume, all without writing. The main process's verdict
    and choice go to every process, so that all stop alike (exit 0, 2 or EXIT_BUSY) and none waits for a main
    process that has gone. Returns the checkpoint to resume (None: from the beginning)."""
    verdict, resume = None, None
    if acc.is_main_process:
        try:
            if out.is_dir():
                lock.acquire(out, create=False)
            check_writable(out)
            resume = resume_point(args, out)
            check_output_dir(args, out, resume)
        except (AlreadyFinished, OutputDirBusy, UsageError) as e:
            verdict = e
        except OSError as e:  # e.g. a lock file that is a symlink, a folder that cannot be read
            verdict = output_error(out, e)
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list
        verdict, resume = broadcast_object_list([verdict, resume])
    if verdict is not None:
        stop_together()  # every process stops with the main process's verdict
        raise verdict
    return resume


def prepare_output_dir(run, state, resume: Path | None, lock: OutputLock) -> JsonlLog:
    """Start writing, on the main process: make OUT and lock it (if claim_output_dir found no lock file), check it
    again under the lock (another run may have written there since), delete what earlier runs recorded when this
    run starts over (with --overwrite_output_dir, or 'latest' with no complete checkpoint; nothing else is ever
    deleted), trim the log to the checkpoint, and write run_config.json. Every process stops alike on an error.
    """
    out, args, acc = run.out, run.args, run.accelerator
    log_path = out / "log.jsonl"
    error = None
    if acc.is_main_process:
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock.acquire(out, create=True)
            check_output_dir(args, out, resume)
            if not continues(out, resume):
                remove_recorded(out)
            if args.overwrite_output_dir:  # a finished run's marker, also one an older version left unrecorded
                (out / "all_results.json").unlink(missing_ok=True)
            tracker = args.project_prefix + (args.task_name or "custom")  # accelerate's tensorboard folder
            record(out, add=["log.jsonl", "run_config.json"] +
                   ([tracker] if args.with_tracking and not os.path.lexists(out / tracker) else []))
            lines = log_path.read_text().splitlines(keepends=True)[:state.log_lines] \
                if resume and log_path.exists() else []
            write_atomic(log_path, "".join(lines))  # lines a killed run wrote after its last checkpoint are dropped
            write_json(out / "run_config.json", run_config(run.resolved.recorded_args(args), state.seed) |
                       {"num_processes": acc.num_processes,
                        "total_train_batch_size": args.per_device_train_batch_size * acc.num_processes} |
                       ({"resumed_from": str(resume)} if resume else {}))
        except (AlreadyFinished, OutputDirBusy, UsageError) as e:
            error = e
        except OSError as e:
            error = output_error(out, e)
    agree(acc, error)
    if args.with_tracking:  # accelerate starts trackers on the main process only
        cfg = {k: v for k, v in run.resolved.recorded_args(args).items() if isinstance(v, (int, float, str, bool))}
        acc.init_trackers(args.project_prefix + (args.task_name or "custom"), cfg)
    acc.wait_for_everyone()
    return JsonlLog(log_path, state, enabled=acc.is_main_process)
