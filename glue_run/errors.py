"""How the training script fails: its kinds of error, their exit statuses, and one-line warnings.

A user mistake is one line on stderr and exit status 2 (`UsageError`), a failed training run status 1
(`TrainingError`), an output folder used by another run `EXIT_BUSY`. Several processes stop together
(`agree`, `stop_together`), only one of them speaks (`is_main_launch`), and each leaves the process group at
the very end (`leave_process_group`).
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

EXIT_BUSY = 75  # EX_TEMPFAIL: scripts/launch.sh counts such a run as busy (try again later), not as failed


class UsageError(Exception):
    """A user mistake (bad flag, bad data): reported as one line on stderr, exit status 2, nothing written."""


class TrainingError(Exception):
    """Training cannot go on (e.g. a non-finite loss): reported as one line on stderr, exit status 1."""


class AlreadyFinished(Exception):
    """The output directory already holds a finished run: say so and exit 0."""


class OutputDirBusy(Exception):
    """Another live run holds the output directory's lock: one line on stderr, exit status EXIT_BUSY."""


def is_main_launch() -> bool:
    """True in a single process or in the launcher's rank 0 (the Accelerator may not exist yet)."""
    return os.environ.get("RANK", "0") == "0"


def warn(message: str) -> None:
    """A warning line on stderr, from one process only (every process checks the data; one says so)."""
    if is_main_launch():
        print(f"run_glue_no_trainer.py: warning: {message}", file=sys.stderr)


@functools.lru_cache(maxsize=None)
def warn_once(message: str) -> None:
    """A warning line on stderr, once per process however often the problem is met."""
    print(f"run_glue_no_trainer.py: warning: {message}", file=sys.stderr)


def output_error(out: Path, e: OSError) -> UsageError:
    """An OSError met while writing in OUT (no permission, a file in the way, a full disk) as one line."""
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return UsageError(f"cannot write the outputs in {out}: {e.strerror or e}{where}")


def stop_together() -> None:
    """Wait for every process (a barrier), where all of them are known to stop: the run finished, or they agreed on
    an error. A process that leaves while another is still inside the last collective can leave that one waiting."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def leave_process_group() -> None:
    """End the process group, if there is one: the last step of a process, once the run's objects are gone.

    Not ending it lets gloo's threads outlive it, and the interpreter's exit can then abort the process
    ("terminate called without an active exception"). Ending it while the DistributedDataParallel model is still
    alive is no better: the model keeps the group, and the group's threads are then joined when the model is
    freed, with the GIL held, which hangs the process if one of those threads is waiting for the GIL at that
    moment (seen, rarely, as a process stuck after its last line of Python). So main() calls this after the run
    is gone, and cycles are collected first: the group's last reference is the one dropped here."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def agree(acc, error: Exception | None) -> None:
    """Raise on every process the first error any process met. A collective (every process of the accelerate
    Accelerator `acc` calls it): where only the main process writes, the others learn that it stopped instead
    of waiting for it forever. All of them pass a barrier before raising (`stop_together`)."""
    if acc.num_processes > 1:
        from accelerate.utils import gather_object
        error = next((e for e in gather_object([error]) if e is not None), None)
    if error is not None:
        stop_together()  # every process stops here
        raise error
