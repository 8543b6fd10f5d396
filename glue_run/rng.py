"""RNG states in checkpoints: each process saves Python's, numpy's, torch's (and CUDA's) generators, and a
resumed run sets them last, so that dropout and IVON's samples continue exactly where they stopped.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

from .errors import UsageError
from .files import load_torch_file


def rng_states() -> dict:
    """This process's RNG states as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def rng_file(rank: int) -> str:
    """Each process's RNG state file in a checkpoint (rank 0 keeps the single-process name)."""
    return "rng.pt" if rank == 0 else f"rng_rank{rank}.pt"


def seed_process(seed: int, rank: int) -> None:
    """Give process `rank` > 0 its own RNG stream (IVON's posterior samples, dropout), derived from the seed.

    Every process starts from `seed`, so the model and adapter are initialised identically; this is called
    once setup is done. Rank 0 keeps the seed's stream, as a single-process run does.
    """
    if rank > 0:
        transformers.set_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]) % 2**31)


def set_rng_states(states: dict) -> None:
    """Set this process's generators to `rng_states`' result."""
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in states["python"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def read_rng(run, path: Path) -> dict | None:
    """This process's RNG states in checkpoint `path` (None if it has no file for this process: it was written
    by fewer processes). Read with the rest of the checkpoint, before anything is written; set last."""
    f = path / rng_file(run.accelerator.process_index)
    if not f.is_file():
        return None
    states = load_torch_file(f)
    if not (isinstance(states, dict) and {"python", "numpy", "torch"} <= set(states)):
        raise UsageError(f"{f}: not an RNG state file of this script")
    return states


def restore_rng(run, path: Path, states: dict | None) -> None:
    """Set this process's RNG state from `read_rng`'s result. A process the checkpoint has no file for gets a
    stream derived from the seed and the step instead."""
    if states is not None:
        set_rng_states(states)
        return
    saved = json.loads((path / "state.json").read_text())
    print(f"note: {path} has no {rng_file(run.accelerator.process_index)} (written by fewer processes); process "
          f"{run.accelerator.process_index} continues with a fresh RNG stream", file=sys.stderr)
    seed_process(saved["seed"] + saved["completed_steps"], run.accelerator.process_index)

