"""Fully trained copies of small modules (e.g. the classification head) saved with the adapter, as in PEFT.

The wrapped module keeps the frozen original at ``<path>.original_module`` and a trainable deep copy at
``<path>.modules_to_save.<adapter>``; forward uses the copy unless adapters are disabled. In the adapter file
the copy is stored under the original path (``<path>.weight``), so a plain base model could load it too.
"""
from __future__ import annotations

import copy
from typing import Any

from torch import nn


class ModulesToSaveWrapper(nn.Module):
    """Route calls to a trainable copy of ``module`` while keeping the original for disabled mode."""

    def __init__(self, module: nn.Module, adapter_name: str) -> None:
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict({adapter_name: copy.deepcopy(module)})
        self.adapter_name = adapter_name
        self.disable_adapters = False
        self.original_module.requires_grad_(False)

    @property
    def active_module(self) -> nn.Module:
        """The module forward currently uses."""
        return self.original_module if self.disable_adapters else self.modules_to_save[self.adapter_name]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the trainable copy (the original while adapters are disabled)."""
        return self.active_module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Model code sometimes reads head attributes directly (e.g. ``classifier.out_features``).
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name in ("original_module", "modules_to_save", "adapter_name",
                                                "disable_adapters"):
                raise
            return getattr(self.active_module, name)
