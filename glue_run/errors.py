"""How the training script fails: its kinds of error, their exit statuses, and one-line warnings.

A user mistake is one line on stderr and exit status 2 (`UsageError`), a failed training run status 1
(`TrainingError`), an output folder used by another run `EXIT_BUSY`. Several processes stop together
(`agree`), only one of them speaks (`is_main_launch`), and all leave the process group together
(`leave_process_group`).
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


def leave_process_group(wait: bool = True) -> None:
    """End the process group, if there is one. Not ending it lets gloo's threads outlive it, and the interpreter's
    exit can then abort the process ("terminate called without an active exception") instead of exiting with its
    status. `wait` only where every process is known to stop at this point (the run finished, or they agreed on
    an error): a barrier first, since a process that tears its end down while another is still inside the last
    collective can leave that one waiting. Elsewhere (an error met by each process on its own) it ends the group
    without waiting for the others."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def agree(acc, error: Exception | None) -> None:
    """Raise on every process the first error any process met. A collective (every process of the accelerate
    Accelerator `acc` calls it): where only the main process writes, the others learn that it stopped instead
    of waiting for it forever. All of them leave the process group before raising."""
    if acc.num_processes > 1:
        from accelerate.utils import gather_object
        error = next((e for e in gather_object([error]) if e is not None), None)
    if error is not None:
        leave_process_group()  # every process stops here
        raise error
