"""The manifest of an output folder: `.run_manifest.json` lists every file and folder runs of the script wrote
there, each entered before it is written, so that --overwrite_output_dir deletes exactly those and nothing else.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import warn_once
from .files import write_json

MANIFEST = ".run_manifest.json"  # what runs of this script wrote in the folder: the only things it ever deletes
LOCK_FILE = ".lock"              # flock'ed by the run that uses the folder (outdir.OutputLock); never an entry


def _manifest_entry_ok(entry: Any) -> bool:
    """A manifest entry names something inside the folder: relative, no '..', not the lock or manifest itself
    (the manifest is input: a crafted one must not delete anything outside)."""
    if not isinstance(entry, str) or not entry.strip("/") or entry.startswith("/") or "\\" in entry:
        return False
    parts = entry.rstrip("/").split("/")
    return all(p not in ("", ".", "..") for p in parts) and entry.rstrip("/") not in (MANIFEST, LOCK_FILE)


def recorded(out: Path) -> list[str]:
    """The entries of OUT/.run_manifest.json: 'name' a file or folder a run of this script wrote whole, 'name/' a
    folder it made to hold such files. [] without a manifest; an unreadable one is reported and ignored."""
    try:
        entries = json.loads((out / MANIFEST).read_text())["written"]
        if not isinstance(entries, list):
            raise TypeError
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError):
        warn_once(f"{out / MANIFEST} is unreadable; ignoring it (nothing it lists will be deleted)")
        return []
    return [e for e in entries if _manifest_entry_ok(e)]



def record(out: Path, add: list[str] = (), drop: list[str] = ()) -> None:
    """Add entries to the manifest before writing them (so that a run killed mid-write leaves nothing unlisted),
    and drop those of temp files removed again. Main process only; the manifest is replaced atomically."""
    entries = recorded(out)
    new = [e for e in entries if e not in drop] + [e for e in dict.fromkeys(add) if e not in entries]
    if new != entries or not (out / MANIFEST).exists():
        _write_manifest(out, new)


def _write_manifest(out: Path, entries: list[str]) -> None:
    write_json(out / MANIFEST, {"about": "written by run_glue_no_trainer.py; --overwrite_output_dir deletes "
                                         "these and nothing else", "written": entries})


def made_dirs(out: Path, rel: Path) -> list[str]:
    """Manifest entries ('a/', 'a/b/') for the folders above OUT/rel that do not exist yet."""
    return [f"{p.as_posix()}/" for p in reversed(rel.parents) if p != Path(".") and not (out / p).exists()]


def remove_recorded(out: Path) -> None:
    """Delete what the manifest lists, and nothing else: files and folders written whole go; folders made to hold
    them go only if empty (a user's file inside stays). Then start an empty manifest."""
    entries = recorded(out)
    for entry in (e for e in entries if not e.endswith("/")):
        path = out / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
    for entry in sorted((e for e in entries if e.endswith("/")), key=lambda e: -e.count("/")):
        with contextlib.suppress(OSError):  # not empty, or gone
            (out / entry).rmdir()
    _write_manifest(out, [])
