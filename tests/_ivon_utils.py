"""Helpers for the IVON tests: the reference ivon-opt 0.1.3 as an oracle, tiny problems, a training loop."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

# Where `make install` puts ivon-opt 0.1.3 (pip --target $(VENV)/ivon_ref); `make test` passes that folder as
# IVON_REF_DIR, so a venv other than .venv works. A plain `pytest` looks in the default .venv.
REPO = Path(__file__).resolve().parent.parent
REF_DIR = Path(os.environ.get("IVON_REF_DIR") or REPO / ".venv" / "ivon_ref") / "ivon"


def load_reference():
    """ivon-opt 0.1.3, imported as ``ivon_reference`` (its own name, ``ivon``, is ours); skip if absent."""
    if "ivon_reference" in sys.modules:
        return sys.modules["ivon_reference"]
    if not (REF_DIR / "__init__.py").is_file():
        pytest.skip(f"reference ivon-opt 0.1.3 not installed at {REF_DIR} (IVON_REF_DIR names its folder)")
    spec = importlib.util.spec_from_file_location(
        "ivon_reference", REF_DIR / "__init__.py", submodule_search_locations=[str(REF_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["ivon_reference"] = module
    spec.loader.exec_module(module)
    return module


def make_params(seed: int = 0, shapes=((5, 7), (7,), (3, 4, 2))) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]


def loss_fn(params) -> torch.Tensor:
    """A smooth non-quadratic loss, so the Hessian estimate varies between elements."""
    return sum(((p**2) * (i + 1)).sum() + (2 * p).sin().sum() for i, p in enumerate(params))


def train(
    opt,
    params,
    steps: int,
    mc_samples: int = 1,
    scheduler: Any = None,
    after_step: Callable[[int], None] | None = None,
) -> None:
    """Standard IVON loop: ``mc_samples`` × (sample, forward, backward, zero_grad), then step."""
    for t in range(steps):
        for _ in range(mc_samples):
            with opt.sampled_params(train=True):
                loss_fn(params).backward()
            opt.zero_grad()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step(t)


def snapshot(opt, params) -> list[torch.Tensor]:
    """Means, then per group momentum and Hessian (clones)."""
    out = [p.detach().clone() for p in params]
    for g in opt.param_groups:
        out += [g["momentum"].clone(), g["hess"].clone()]
    return out


def assert_bit_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and x.shape == y.shape, i
        assert torch.equal(x, y), f"tensor {i} differs: max |diff| {(x - y).abs().max().item():.3g}"
