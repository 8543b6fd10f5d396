"""LoRA layers: ``y = W x + scaling * B A dropout(x)`` (Hu et al., 2021), and the wrapper base class.

``AdapterLayer`` holds what LoRA and AdaLoRA share: the frozen ``base_layer``, per-adapter hyper-parameters,
merging and disabling. ``LoraLinear`` is standard LoRA with ``lora_A``/``lora_B`` as ``nn.Linear`` submodules,
so its state-dict keys end in ``.weight`` (``<path>.lora_A.<adapter>.weight``), as in PEFT.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn


def _conv1d_class() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for the layers themselves
        return None
    return Conv1D


def is_supported_base_layer(module: nn.Module) -> bool:
    """True for ``torch.nn.Linear`` and transformers' ``Conv1D`` (GPT-2 style, weight stored ``[in, out]``)."""
    conv1d = _conv1d_class()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def transpose_if(weight: Tensor, fan_in_fan_out: bool) -> Tensor:
    """``weight.T`` if the base layer stores its weight as ``[in, out]`` (Conv1D), else ``weight``."""
    return weight.T if fan_in_fan_out else weight


class AdapterLayer(nn.Module):
    """A frozen ``base_layer`` plus one adapter; subclasses add the adapter tensors.

    Subclasses implement ``update_layer`` (create/reset tensors, consuming RNG in a fixed order),
    ``adapter_delta(x)`` (the branch added to the base output) and ``get_delta_weight()`` (the same map as a
    weight matrix shaped like ``base_layer.weight``).
    """

    #: names of the ParameterDict/ModuleDict attributes holding trainable adapter tensors
    adapter_attrs: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module, adapter_name: str, fan_in_fan_out: bool = False) -> None:
        super().__init__()
        if not is_supported_base_layer(base_layer):
            raise ValueError(f"cannot adapt a {type(base_layer).__name__}; only nn.Linear and Conv1D are supported")
        self.base_layer = base_layer
        if isinstance(base_layer, nn.Linear):
            self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        else:  # Conv1D keeps its weight as [in, out]
            self.in_features, self.out_features = base_layer.weight.shape
        self.fan_in_fan_out = fan_in_fan_out
        self.adapter_name = adapter_name
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.merged_adapters: list[str] = []
        self.disable_adapters = False
        base_layer.weight.requires_grad_(False)

    # -- to be provided by subclasses
    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float,
                     init_lora_weights: Any, **kwargs: Any) -> None:
        """Create (or recreate) the adapter tensors of ``adapter_name`` at rank ``r``."""
        raise NotImplementedError

    def adapter_delta(self, x: Tensor, result: Tensor) -> Tensor:
        """Return ``result`` plus the adapter branch for input ``x``."""
        raise NotImplementedError

    def get_delta_weight(self, adapter_name: str) -> Tensor:
        """The adapter as a weight update ``ΔW``, shaped like ``base_layer.weight``."""
        raise NotImplementedError

    # -- shared behaviour
    @property
    def merged(self) -> bool:
        """True while the adapter is folded into ``base_layer.weight``."""
        return bool(self.merged_adapters)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The trainable adapter tensors of this layer (not ``base_layer``, not AdaLoRA's frozen ``ranknum``)."""
        return [p for name in self.adapter_attrs for p in getattr(self, name).parameters()]

    def _move_to_base_device(self, adapter_name: str) -> None:
        # Adapter tensors follow the base weight's device but keep their own (fp32) dtype, as in PEFT.
        device = self.base_layer.weight.device
        for name in self.adapter_attrs + ("ranknum",):
            container = getattr(self, name, None)
            if container is None or adapter_name not in container:
                continue
            if isinstance(container, nn.ModuleDict):
                container[adapter_name].to(device)
            elif container[adapter_name].device != device:
                old = container[adapter_name]
                container[adapter_name] = nn.Parameter(old.data.to(device), requires_grad=old.requires_grad)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """``base_layer(x)`` plus the adapter branch, unless merged or disabled."""
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged or self.adapter_name not in self.r:
            return result
        return self.adapter_delta(x, result)

    def merge(self, safe_merge: bool = False) -> None:
        """Add ``get_delta_weight()`` to the base weight; with ``safe_merge`` check finiteness first."""
        if self.merged:
            warnings.warn("adapter already merged; nothing to do", stacklevel=2)
            return
        weight = self.base_layer.weight
        delta = self.get_delta_weight(self.adapter_name).to(weight.dtype)
        if safe_merge:
            merged = weight.data.clone() + delta
            if not torch.isfinite(merged).all():
                raise ValueError(f"merging adapter {self.adapter_name!r} would give NaN/inf weights; not merged")
            weight.data = merged
        else:
            weight.data += delta
        self.merged_adapters.append(self.adapter_name)

    def unmerge(self) -> None:
        """Subtract the merged deltas again (in reverse merge order)."""
        if not self.merged:
            warnings.warn("adapter is not merged; nothing to unmerge", stacklevel=2)
            return
        weight = self.base_layer.weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            weight.data -= self.get_delta_weight(name).to(weight.dtype)


class LoraLinear(AdapterLayer):
    """Standard LoRA on a Linear/Conv1D layer.

    Tensors per adapter: ``lora_A.<name>`` = ``nn.Linear(in, r)`` (weight ``[r, in]``), ``lora_B.<name>`` =
    ``nn.Linear(r, out)`` (weight ``[out, r]``), ``lora_dropout.<name>``.
    Forward: ``y = base(x) + B(A(dropout(x))) * scaling`` with ``scaling = alpha / r`` (``alpha / sqrt(r)``
    with rsLoRA). Init: A kaiming-uniform(a=sqrt(5)), B = 0, so the adapter starts as the identity.
    """

    adapter_attrs = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module, adapter_name: str, r: int, lora_alpha: float = 8,
                 lora_dropout: float = 0.0, init_lora_weights: bool = True, fan_in_fan_out: bool = False,
                 use_rslora: bool = False) -> None:
        super().__init__(base_layer, adapter_name, fan_in_fan_out)
        self.lora_dropout = nn.ModuleDict()
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights, use_rslora=use_rslora)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float,
                     init_lora_weights: Any, use_rslora: bool = False, **kwargs: Any) -> None:
        """Create the adapter. RNG order (as PEFT): Linear(in, r) init, Linear(r, out) init, then the reset."""
        if r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r}")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r
        self.lora_dropout[adapter_name] = nn.Dropout(p=lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.lora_A[adapter_name] = nn.Linear(self.in_features, r, bias=False)
        self.lora_B[adapter_name] = nn.Linear(r, self.out_features, bias=False)
        if init_lora_weights:
            nn.init.kaiming_uniform_(self.lora_A[adapter_name].weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B[adapter_name].weight)
        self._move_to_base_device(adapter_name)

    def adapter_delta(self, x: Tensor, result: Tensor) -> Tensor:
        """``result + B(A(dropout(x))) * scaling``, computed in the adapter dtype, returned in ``result``'s."""
        name = self.adapter_name
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        out_dtype = result.dtype
        x = x.to(lora_A.weight.dtype)
        # in place on lora_B's output (a bias-free linear: its backward needs only the inputs); same bits
        # as ``result + lora_B(...) * scaling`` without the two activation-sized temporaries
        delta = lora_B(lora_A(self.lora_dropout[name](x)))
        result = result + delta.mul_(self.scaling[name])
        return result.to(out_dtype)

    def get_delta_weight(self, adapter_name: str) -> Tensor:
        """``ΔW = T(B A) * scaling``, shaped like ``base_layer.weight``."""
        weight_A = self.lora_A[adapter_name].weight
        weight_B = self.lora_B[adapter_name].weight
        return transpose_if(weight_B @ weight_A, self.fan_in_fan_out) * self.scaling[adapter_name]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r.get(self.adapter_name)}"
