"""Files written whole and read safely: every file the training script and its tools write goes through
`write_atomic` (a temp file beside it, then a rename), so a reader or a killed run never sees half of one; every
torch file they read goes through `load_torch_file` (tensors and plain values only).

torch is imported where it is needed: scripts/summarize.py and bench/collect_results.py write their text files
with `write_atomic` without loading it.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from .errors import UsageError


class _FullWriter:
    """A file for torch.save whose write() writes every byte or raises OSError, and remembers that error: torch.save
    reports a failed write (a full disk, a file size limit) only as an obscure 'unexpected pos' RuntimeError."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path, self.error = fd, path, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            self.error = self.error or OSError(e.errno, e.strerror, str(self.path))
            raise self.error from None
        return n

    def flush(self) -> None:
        pass


def save_file(path: Path, obj: Any, fsync: bool = False) -> None:
    """Write `obj` to `path`: bytes as they are, text as UTF-8, anything else with torch.save; with `fsync`, on
    disk on return (a checkpoint's completion marker may only vouch for what is on disk). A failed write is an
    OSError."""
    with open(path, "wb", buffering=0) as f:
        writer = _FullWriter(f.fileno(), path)
        if isinstance(obj, (bytes, str)):
            writer.write(obj.encode("utf-8") if isinstance(obj, str) else obj)
        else:
            import torch
            try:
                torch.save(obj, writer)
            except RuntimeError:
                if writer.error is not None:
                    raise writer.error from None
                raise
        if fsync:
            os.fsync(f.fileno())


def write_atomic(path: Path, obj: Any) -> None:
    """Replace `path` with `obj` (as `save_file` writes it) in one step: a reader sees the old file or the new one,
    never half of one, and a symlink at `path` is itself replaced (os.replace), so its target is never written.
    The file gets mode 0644; on any error (a full disk) no temp file is left behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file(Path(tmp), obj)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    """`write_atomic` of `obj` as indented JSON (anything JSON cannot hold as its str) and a final newline."""
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a new file, a rename) durable; filesystems that cannot are left as they are."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_torch_file(path: Path, map_location=None) -> Any:
    """torch.load restricted to tensors and plain values (weights_only=True), so that a checkpoint or adapter
    folder someone else wrote can never run code here. Anything else, or an unreadable/truncated file, is bad
    input named in one line."""
    import torch
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UsageError(f"{path}: refusing to load: it holds objects other than tensors and plain values, "
                         f"which could run code ({str(e).splitlines()[0][:200]})") from None
    except (EOFError, RuntimeError, OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot be read: truncated or not a torch file ({type(e).__name__})") from None
