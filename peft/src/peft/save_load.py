"""Adapter files: ``adapter_model.safetensors`` keys, save-time rank resize, and loading, in PEFT's format.

Keys on disk, all under ``base_model.model.`` and without the adapter name:

* LoRA: ``<path>.lora_A.weight`` ``[r, in]``, ``<path>.lora_B.weight`` ``[out, r]``
* AdaLoRA/VILoRA: ``<path>.lora_A`` ``[k, in]``, ``<path>.lora_E`` ``[k, 1]``, ``<path>.lora_B`` ``[out, k]``
  where ``k = sum(rank_pattern["<path>.lora_E"])`` (``init_r`` without a pattern; 0 gives empty tensors).
  ``ranknum`` is never saved: it is rebuilt as ``init_r`` on load.
* modules_to_save copies: ``<path>.<param>`` (e.g. ``classifier.weight``).

In memory the same tensors are ``base_model.model.<path>.lora_A.<adapter>[.weight]`` and
``<path>.modules_to_save.<adapter>.<param>``; loading accepts keys with or without the adapter name.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from .config import AdaLoraConfig
from .rank_pattern import adapter_tensor_module, keep_triplets, masks_by_module

if TYPE_CHECKING:
    from .peft_model import PeftModel

WEIGHTS_NAME = "adapter_model.bin"
SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<head>.*\.lora_[A-Za-z]+)(?P<tail>(\..*)?)$")


def get_peft_model_state_dict(model: "PeftModel", adapter_name: Optional[str] = None) -> dict[str, Tensor]:
    """The tensors ``save_pretrained`` writes, with their on-disk keys.

    In PEFT's order: keep the adapter's ``lora_`` keys, cut AdaLoRA tensors to the rank pattern, add the
    modules_to_save copies, then drop the adapter name from every key.
    """
    adapter_name = adapter_name or model.active_adapter
    config = model.peft_config[adapter_name]
    full = model.state_dict()
    out = {k: v for k, v in full.items() if "lora_" in k and adapter_name in k}
    if isinstance(config, AdaLoraConfig) and config.rank_pattern:
        masks = masks_by_module(config.rank_pattern, adapter_name)
        for key in list(out):
            path = adapter_tensor_module(key, adapter_name) if key.startswith(PREFIX) else None
            if path in masks:
                out[key] = keep_triplets(key, out[key], masks[path])
    marker = f".modules_to_save.{adapter_name}."
    for key, value in full.items():
        if marker in key:
            out[key.replace(marker, ".")] = value
    suffix = "." + adapter_name
    return {key.replace(suffix, ""): value.detach().contiguous() for key, value in out.items() if marker not in key}


def _to_model_key(key: str, adapter_name: str, wrapper_paths: list[str]) -> str:
    """Map an on-disk key to the in-memory key of a model holding ``adapter_name`` (PEFT's mapping on load)."""
    if not key.startswith(PREFIX):
        key = PREFIX + key
    body = key[len(PREFIX):]
    for path in wrapper_paths:
        if body.startswith(path + ".") and ".modules_to_save." not in body and ".original_module." not in body:
            return f"{PREFIX}{path}.modules_to_save.{adapter_name}.{body[len(path) + 1:]}"
    match = _LORA_KEY.match(key)
    if match is None:
        return key
    head, tail = match.group("head"), match.group("tail")
    if tail == f".{adapter_name}" or tail.startswith(f".{adapter_name}."):
        return key
    return f"{head}.{adapter_name}{tail}"


def set_peft_model_state_dict(model: "PeftModel", state_dict: dict[str, Tensor],
                              adapter_name: Optional[str] = None) -> None:
    """Copy adapter tensors from a file's state dict into ``model``.

    Raises ValueError if a file key has no counterpart in the model, if a tensor's shape differs (resize to the
    rank pattern first), or if the model has adapter tensors the file lacks.
    """
    adapter_name = adapter_name or model.active_adapter
    wrapper_paths = [path for path, _ in model.base_model.modules_to_save_wrappers()]
    mapped = {_to_model_key(k, adapter_name, wrapper_paths): v for k, v in state_dict.items()}
    own = model.state_dict()
    expected = {k for k in own if ("lora_" in k and adapter_name in k) or f".modules_to_save.{adapter_name}." in k}
    unexpected = sorted(set(mapped) - set(own))
    if unexpected:
        raise ValueError(f"adapter file has keys the model lacks (wrong base model?): {unexpected[:5]}")
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in mapped.items() if v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f"adapter tensor shapes do not match the model: {mismatched[:5]}")
    missing = sorted(expected - set(mapped))
    if missing:
        raise ValueError(f"adapter file lacks tensors the model's adapter has: {missing[:5]}")
    model.load_state_dict(mapped, strict=False)


def save_adapter_weights(state_dict: dict[str, Tensor], directory: str, safe_serialization: bool = True) -> None:
    """Write ``adapter_model.safetensors`` (metadata ``{"format": "pt"}``) or ``adapter_model.bin``."""
    os.makedirs(directory, exist_ok=True)
    if safe_serialization:
        from safetensors.torch import save_file

        save_file(state_dict, os.path.join(directory, SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
    else:
        torch.save(state_dict, os.path.join(directory, WEIGHTS_NAME))


def load_adapter_weights(directory: str, device: str = "cpu") -> dict[str, Tensor]:
    """Read the adapter tensors of ``directory`` (safetensors preferred, ``.bin`` as fallback)."""
    path = os.path.join(directory, SAFETENSORS_WEIGHTS_NAME)
    if os.path.isfile(path):
        from safetensors.torch import load_file

        return load_file(path, device=device)
    path = os.path.join(directory, WEIGHTS_NAME)
    if os.path.isfile(path):
        return torch.load(path, map_location=device, weights_only=True)
    raise ValueError(f"no {SAFETENSORS_WEIGHTS_NAME} or {WEIGHTS_NAME} in {directory!r}")


def write_model_card(directory: str, base_model_name_or_path: Optional[str]) -> None:
    """A minimal README.md with the YAML front matter PEFT writes (``library_name: peft``)."""
    path = os.path.join(directory, "README.md")
    if os.path.exists(path):
        return
    lines = ["---"]
    if base_model_name_or_path:
        lines.append(f"base_model: {base_model_name_or_path}")
    lines += ["library_name: peft", "---", "", "# Adapter", "",
              "LoRA/AdaLoRA/VILoRA adapter saved with the `peft` package of the VILoRA reproduction.", ""]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
