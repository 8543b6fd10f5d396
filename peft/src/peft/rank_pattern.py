"""Rank patterns: which SVD triplets of each AdaLoRA/VILoRA matrix are kept, and the kept slices of its tensors.

The allocator stores ``config.rank_pattern`` as ``{"<module path>.lora_E.<adapter>": [bool] * init_r}``
(True = kept); ``adapter_config.json`` holds the same keys without the adapter name (``"<module path>.lora_E"``).
Keeping the triplets of a mask cuts ``lora_A`` ``[r, in]`` and ``lora_E`` ``[r, 1]`` to their kept rows and
``lora_B`` ``[out, r]`` to its kept columns, ``k = sum(mask)`` of them. Saving an adapter, resizing a layer to a
pattern and cutting an optimizer's per-element state to a saved adapter all use the one cut here.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["MODEL_PREFIX", "adapter_tensor_module", "keep_triplets", "masks_by_module", "pattern_module_path",
           "strip_adapter_name", "triplet_dim"]

# In-memory names of adapter tensors under a PeftModel start with this; file keys do too.
MODEL_PREFIX = "base_model.model."
_TRIPLET_TENSORS = ("lora_A", "lora_E", "lora_B")


def strip_adapter_name(key: str, adapter_name: str) -> str:
    """``"x.lora_E.default"`` -> ``"x.lora_E"``; other keys are returned unchanged."""
    suffix = "." + adapter_name
    return key[: -len(suffix)] if key.endswith(suffix) else key


def pattern_module_path(key: str, adapter_name: str) -> str:
    """``"<path>.lora_E.<adapter>"`` or ``"<path>.lora_E"`` -> ``"<path>"``; ValueError for any other key."""
    for suffix in (f".lora_E.{adapter_name}", ".lora_E"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    raise ValueError(f"rank_pattern key {key!r} does not end in '.lora_E' or '.lora_E.{adapter_name}'")


def _as_bools(mask: Any) -> list[bool]:
    return [bool(m) for m in (mask.tolist() if hasattr(mask, "tolist") else mask)]


def masks_by_module(rank_pattern: Optional[Mapping[str, Any]], adapter_name: str = "default") -> dict[str, list[bool]]:
    """``{module path: [bool] * init_r}`` from a rank pattern with or without adapter names in its keys
    (``{}`` for None); ValueError for a key that names no ``lora_E``."""
    return {pattern_module_path(key, adapter_name): _as_bools(mask) for key, mask in (rank_pattern or {}).items()}


def adapter_tensor_module(name: str, adapter_name: str = "default") -> Optional[str]:
    """The module path of an AdaLoRA tensor named ``"[base_model.model.]<path>.lora_{A,E,B}.<adapter>"`` (a
    parameter, or a file key that kept the adapter name), or None for any other name."""
    for kind in _TRIPLET_TENSORS:
        suffix = f".{kind}.{adapter_name}"
        if name.endswith(suffix):
            return name[: -len(suffix)].removeprefix(MODEL_PREFIX)
    return None


def triplet_dim(name: str) -> int:
    """The axis of tensor ``name`` that indexes triplets: columns of ``lora_B``, rows of ``lora_A`` and ``lora_E``."""
    return 1 if "lora_B" in name else 0


def keep_triplets(name: str, tensor: Tensor, mask: Any) -> Tensor:
    """``tensor`` (``lora_A``/``lora_E``/``lora_B`` named ``name``, or state shaped like it) cut to the triplets
    ``mask`` keeps: ``A[mask]``, ``E[mask]``, ``B[:, mask]``. A tensor already at the kept rank passes through
    (so cutting twice is harmless); any other size raises ValueError."""
    mask = _as_bools(mask)
    dim, k = triplet_dim(name), sum(mask)
    if tensor.shape[dim] == len(mask):
        keep = torch.as_tensor(mask, dtype=torch.bool, device=tensor.device)
        return tensor[keep] if dim == 0 else tensor[:, keep]
    if tensor.shape[dim] == k:
        return tensor
    raise ValueError(f"{name}: size {tensor.shape[dim]} fits neither init_r={len(mask)} nor the kept rank {k}")
