"""``LoraModel``: puts adapter layers into a transformers model and manages them as a whole.

Injection, in PEFT's order:
1. ``target_modules`` defaults to the model type's list (``peft.targets``).
2. Matching modules are replaced, in ``named_modules()`` order, by adapter layers wrapping the original as
   ``base_layer``; creation order fixes the RNG stream, so the same seed gives the same adapter.
3. Modules named in ``modules_to_save`` are not adapted but wrapped in ``ModulesToSaveWrapper``.
4. Everything except adapter tensors and modules_to_save copies is frozen (all of it in inference mode).

``AdaLoraModel`` (``peft.adalora``) subclasses this with SVD-form layers and the rank allocator.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Optional

from torch import nn

from .config import LoraConfig
from .lora import AdapterLayer, LoraLinear, _conv1d_class
from .modules_to_save import ModulesToSaveWrapper
from .targets import bounded_fullmatch, default_target_modules, find_targets


def _parent_and_name(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, child = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), child


def pattern_value(patterns: Optional[dict], path: str, default: Any) -> Any:
    """Value of the first key of ``patterns`` that matches the end of ``path`` as a regex (PEFT semantics)."""
    for key, value in (patterns or {}).items():
        if bounded_fullmatch(rf"(.*\.)?(?:{key})", path, what="pattern key"):
            return value
    return default


class LoraModel(nn.Module):
    """The tuner: ``self.model`` is the adapted transformers model, ``self.peft_config = {name: config}``.

    Attribute lookups it cannot answer go to ``self.model``. ``forward`` calls the model unchanged.
    """

    layer_cls: type[AdapterLayer] = LoraLinear

    def __init__(self, model: nn.Module, config: LoraConfig, adapter_name: str = "default") -> None:
        super().__init__()
        self.model = model
        self.peft_config: dict[str, LoraConfig] = {adapter_name: config}
        self.active_adapter = adapter_name
        config.validate()
        if config.target_modules is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            config.target_modules = default_target_modules(model_type, config.is_adaptive)
        for path in find_targets(model, config.target_modules, config.modules_to_save):
            parent, child = _parent_and_name(model, path)
            setattr(parent, child, self._create_layer(getattr(parent, child), path, config, adapter_name))
        self._wrap_modules_to_save(config, adapter_name)
        self.set_trainable(not config.inference_mode)

    # ------------------------------------------------------------------ construction
    def _layer_kwargs(self, base: nn.Module, path: str, config: LoraConfig) -> dict[str, Any]:
        return dict(
            r=pattern_value(config.rank_pattern, path, config.r),
            lora_alpha=pattern_value(config.alpha_pattern, path, config.lora_alpha),
            lora_dropout=config.lora_dropout,
            init_lora_weights=config.init_lora_weights,
            use_rslora=config.use_rslora,
        )

    def _create_layer(self, base: nn.Module, path: str, config: LoraConfig, adapter_name: str) -> AdapterLayer:
        conv1d = _conv1d_class()
        is_conv1d = conv1d is not None and isinstance(base, conv1d)
        if is_conv1d and not config.fan_in_fan_out:
            warnings.warn("Conv1D stores weights as [in, out]; setting fan_in_fan_out=True", stacklevel=3)
            config.fan_in_fan_out = True
        elif not is_conv1d and config.fan_in_fan_out:
            warnings.warn("nn.Linear stores weights as [out, in]; setting fan_in_fan_out=False", stacklevel=3)
            config.fan_in_fan_out = False
        return self.layer_cls(base, adapter_name, fan_in_fan_out=config.fan_in_fan_out,
                              **self._layer_kwargs(base, path, config))

    def _wrap_modules_to_save(self, config: LoraConfig, adapter_name: str) -> None:
        names = config.modules_to_save or []
        paths = [p for p, _ in self.model.named_modules() if p and any(p.endswith(n) for n in names)]
        # Wrap outermost matches only: a wrapped module's inner copies must not be wrapped again.
        outermost = [p for p in paths if not any(p.startswith(q + ".") for q in paths if q != p)]
        for path in outermost:
            parent, child = _parent_and_name(self.model, path)
            module = getattr(parent, child)
            if not isinstance(module, ModulesToSaveWrapper):
                setattr(parent, child, ModulesToSaveWrapper(module, adapter_name))

    # ------------------------------------------------------------------ iteration / trainability
    def adapter_layers(self) -> Iterator[tuple[str, AdapterLayer]]:
        """``(module path, layer)`` for every adapter layer, in model order."""
        for path, module in self.model.named_modules():
            if isinstance(module, AdapterLayer):
                yield path, module

    def modules_to_save_wrappers(self) -> Iterator[tuple[str, ModulesToSaveWrapper]]:
        """``(module path, wrapper)`` for every modules_to_save wrapper."""
        for path, module in self.model.named_modules():
            if isinstance(module, ModulesToSaveWrapper):
                yield path, module

    def set_trainable(self, trainable: bool) -> None:
        """Freeze the model; unfreeze adapter tensors and modules_to_save copies iff ``trainable``."""
        self.peft_config[self.active_adapter].inference_mode = not trainable
        for p in self.model.parameters():
            p.requires_grad_(False)
        if not trainable:
            return
        for _, layer in self.adapter_layers():
            for p in layer.adapter_parameters():
                p.requires_grad_(True)
        for _, wrapper in self.modules_to_save_wrappers():
            wrapper.modules_to_save.requires_grad_(True)

    # ------------------------------------------------------------------ enable / merge / unload
    def set_adapters_enabled(self, enabled: bool) -> None:
        """Switch every adapter layer and modules_to_save wrapper between adapted and base behaviour."""
        for _, module in list(self.adapter_layers()) + list(self.modules_to_save_wrappers()):
            module.disable_adapters = not enabled

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context in which the model behaves as the base model (merged adapters are unmerged first)."""
        self.set_adapters_enabled(False)
        try:
            yield
        finally:
            self.set_adapters_enabled(True)

    def merge_adapter(self, safe_merge: bool = False) -> None:
        """Fold every adapter into its base weight (forward then skips the adapter branch)."""
        for _, layer in self.adapter_layers():
            if not layer.merged:
                layer.merge(safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        """Undo ``merge_adapter``."""
        for _, layer in self.adapter_layers():
            if layer.merged:
                layer.unmerge()

    def _unload(self, merge: bool, safe_merge: bool = False) -> nn.Module:
        for path, layer in list(self.adapter_layers()):
            if merge and not layer.merged:
                layer.merge(safe_merge=safe_merge)
            parent, child = _parent_and_name(self.model, path)
            setattr(parent, child, layer.base_layer)
        for path, wrapper in list(self.modules_to_save_wrappers()):
            parent, child = _parent_and_name(self.model, path)
            setattr(parent, child, wrapper.modules_to_save[wrapper.adapter_name] if merge else wrapper.original_module)
        return self.model

    def merge_and_unload(self, safe_merge: bool = False) -> nn.Module:
        """Merge the adapters, remove all wrappers and return the plain model (trained heads kept)."""
        return self._unload(merge=True, safe_merge=safe_merge)

    def unload(self) -> nn.Module:
        """Remove all wrappers without merging and return the original model."""
        return self._unload(merge=False)

    # ------------------------------------------------------------------ passthrough
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the adapted model with the given arguments."""
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "model":
                raise
            return getattr(self.model, name)
