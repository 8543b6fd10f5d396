"""AdaLoRA (Zhang et al., 2023) and VILoRA: SVD-form adapters whose triplets are pruned to a rank budget.

Per adapted layer ``W: [out, in]``, as PEFT 0.11's ``SVDLinear`` computes it (AdaLoRA paper, eq. 3)::

    ΔW = B (A ⊙ E) * alpha / (ranknum + 1e-5)        A: [r, in], E: [r, 1], B: [out, r]
    y  = W x + ((dropout(x) @ (A ⊙ E)ᵀ) @ Bᵀ) * alpha / (ranknum + 1e-5)

``ranknum`` is a frozen ``[1]`` parameter equal to ``init_r`` for the adapter's whole life (pruning zeroes
entries of E; it does not change ranknum). ``AdaLoraModel`` adds the orthogonality penalty (AdaLoRA paper, eq. 4)
to the loss and hands budget scheduling and masking to ``peft.rank_allocator.RankAllocator``.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from .config import AdaLoraConfig
from .lora import AdapterLayer, transpose_if
from .rank_pattern import keep_triplets, pattern_module_path
from .tuner import LoraModel


class SVDLinear(AdapterLayer):
    """AdaLoRA layer: ``lora_A``, ``lora_B``, ``lora_E``, ``ranknum`` are ParameterDict entries (no ``.weight``).

    Registration order is ``base_layer``, ``lora_A``, ``lora_B``, ``lora_E``, ``ranknum`` (as in PEFT), which
    fixes the order of ``named_parameters()`` that optimizers and the allocator see.
    """

    adapter_attrs = ("lora_A", "lora_B", "lora_E")

    def __init__(self, base_layer: nn.Module, adapter_name: str, r: int, lora_alpha: float = 8,
                 lora_dropout: float = 0.0, init_lora_weights: Any = True, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, adapter_name, fan_in_fan_out)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_E = nn.ParameterDict()
        self.ranknum = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float,
                     init_lora_weights: Any, **kwargs: Any) -> None:
        """(Re)create the adapter at rank ``r``.

        RNG consumption is PEFT 0.11's, draw for draw: ``randn(r, in)``, ``randn(r, 1)``, ``randn(out, r)``,
        ``randn(1)`` placeholders, then ``E ~ N(0, 0.02)``, ``A ~ N(0, 0.02)``, ``B ~ N(0, 0.02)``. With
        ``"zero_e"`` E is set to 0 without drawing (current PEFT's order); with False the placeholders stay.
        """
        if r < 0:
            raise ValueError(f"AdaLoRA rank must be >= 0, got {r}")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha if lora_alpha > 0 else float(r)
        self.lora_dropout[adapter_name] = nn.Dropout(p=lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.lora_A[adapter_name] = nn.Parameter(torch.randn(r, self.in_features))
        self.lora_E[adapter_name] = nn.Parameter(torch.randn(r, 1))
        self.lora_B[adapter_name] = nn.Parameter(torch.randn(self.out_features, r))
        self.ranknum[adapter_name] = nn.Parameter(torch.randn(1), requires_grad=False)
        self.ranknum[adapter_name].data.fill_(float(r))
        with torch.no_grad():
            if init_lora_weights == "zero_e":
                nn.init.zeros_(self.lora_E[adapter_name])
            elif init_lora_weights:
                nn.init.normal_(self.lora_E[adapter_name], mean=0.0, std=0.02)
            if init_lora_weights:
                nn.init.normal_(self.lora_A[adapter_name], mean=0.0, std=0.02)
                nn.init.normal_(self.lora_B[adapter_name], mean=0.0, std=0.02)
        self._dropout_p = lora_dropout
        self._init_mode = init_lora_weights
        self._move_to_base_device(adapter_name)

    def adapter_delta(self, x: Tensor, result: Tensor) -> Tensor:
        """``result += ((dropout(x) @ (A ⊙ E)ᵀ) @ Bᵀ) * scaling / (ranknum + 1e-5)`` (PEFT's operation order)."""
        name = self.adapter_name
        lora_A, lora_B, lora_E = self.lora_A[name], self.lora_B[name], self.lora_E[name]
        x = x.to(lora_A.dtype)
        # Op order matters for bit-exact logits: matmul, matmul, * scaling, / (ranknum + 1e-5), += result.
        # The scalings run in place on the matmul's output (its backward needs only the inputs), which
        # saves two activation-sized temporaries per layer and gives the same bits.
        delta = self.lora_dropout[name](x) @ (lora_A * lora_E).T @ lora_B.T
        result += delta.mul_(self.scaling[name]).div_(self.ranknum[name] + 1e-5)
        return result

    def get_delta_weight(self, adapter_name: str) -> Tensor:
        """``ΔW = T(B (A ⊙ E)) * scaling / (ranknum + 1e-5)``, shaped like ``base_layer.weight``."""
        A, B, E = self.lora_A[adapter_name], self.lora_B[adapter_name], self.lora_E[adapter_name]
        delta = transpose_if(B @ (A * E), self.fan_in_fan_out)
        return delta * self.scaling[adapter_name] / (self.ranknum[adapter_name] + 1e-5)

    def resize(self, mask: list[bool]) -> None:
        """Keep only the triplets with ``mask[i]`` True, as PEFT's resize does; ``len(mask)`` is init_r.

        The layer is rebuilt at rank ``k = sum(mask)`` (consuming RNG as ``update_layer``) and the kept slices
        ``A[mask]``, ``E[mask]``, ``B[:, mask]`` and the old ranknum are copied back. A layer already at rank k
        is left alone, so loading twice is harmless.
        """
        name = self.adapter_name
        mask_t = torch.as_tensor([bool(m) for m in mask], dtype=torch.bool)
        k, current = int(mask_t.sum()), self.lora_A[name].shape[0]
        if current != mask_t.numel():
            if current == k:
                return
            raise ValueError(f"rank pattern of length {mask_t.numel()} (keeping {k}) does not fit a layer of rank {current}")
        kept_A, kept_E, kept_B = (keep_triplets(kind, getattr(self, kind)[name].data, mask)
                                  for kind in ("lora_A", "lora_E", "lora_B"))
        old_ranknum = self.ranknum[name].data.clone()
        self.update_layer(name, k, self.lora_alpha[name], self._dropout_p, self._init_mode)
        if k > 0:
            self.lora_A[name].data.copy_(kept_A)
            self.lora_E[name].data.copy_(kept_E)
            self.lora_B[name].data.copy_(kept_B)
            self.ranknum[name].data.copy_(old_ranknum)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r.get(self.adapter_name)}"


def orthogonal_penalty(model: nn.Module, adapter_name: str) -> Tensor:
    """Mean Frobenius distance of ``A Aᵀ`` and ``Bᵀ B`` from the identity (AdaLoRA paper, eq. 4; PEFT's form).

    ``R = (1/N) Σ ‖C − I‖_F`` over every ``lora_A``/``lora_B`` parameter of ``model`` whose name contains the
    adapter name; ``C = A Aᵀ`` for A ``[r, in]``, ``C = Bᵀ B`` for B ``[out, r]``; rank-0 matrices add 0 but
    count in N. Not squared. Returns a 0-dim tensor (0 if there is no adapter).
    """
    total: Optional[Tensor] = None
    count = 0
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter_name in name:
            gram = p @ p.T if "lora_A" in name else p.T @ p
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            term = torch.norm(gram - eye, p="fro")
            total = term if total is None else total + term
            count += 1
    if total is None:
        return torch.zeros(())
    return total / count


class AdaLoraModel(LoraModel):
    """Tuner for AdaLoRA: SVD layers at ``init_r``, orthogonal penalty, and the rank allocator.

    Training-loop protocol (the same as PEFT's): after ``loss.backward()`` and ``optimizer.step()`` and *before*
    ``zero_grad()``, call ``update_and_allocate(global_step)``. The allocator is created only for a trainable
    adapter and holds the live config, so setting ``config.total_step`` after construction is seen.
    """

    layer_cls = SVDLinear

    def __init__(self, model: nn.Module, config: AdaLoraConfig, adapter_name: str = "default") -> None:
        super().__init__(model, config, adapter_name)
        object.__setattr__(self, "rank_allocator", None)  # never registered as a submodule
        if not config.inference_mode:
            self._create_allocator()

    def _layer_kwargs(self, base: nn.Module, path: str, config: AdaLoraConfig) -> dict[str, Any]:
        return dict(r=config.init_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                    init_lora_weights=config.init_lora_weights)

    def _create_allocator(self) -> None:
        from .rank_allocator import RankAllocator  # written by the allocator side of the team

        config = self.peft_config[self.active_adapter]
        object.__setattr__(self, "rank_allocator", RankAllocator(self.model, config, self.active_adapter))

    def set_trainable(self, trainable: bool) -> None:
        """As ``LoraModel.set_trainable``; making a loaded adapter trainable also creates its allocator."""
        super().set_trainable(trainable)
        if trainable and getattr(self, "rank_allocator", "unset") is None:
            self._create_allocator()

    # ------------------------------------------------------------------ forward with the penalty
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the model; if it returned a loss (labels given), add ``orth_reg_weight * R`` (orthogonal_penalty)."""
        outputs = self.model(*args, **kwargs)
        loss = getattr(outputs, "loss", None)
        weight = self.peft_config[self.active_adapter].orth_reg_weight
        if isinstance(loss, Tensor) and weight > 0:
            outputs.loss = loss + weight * orthogonal_penalty(self.model, self.active_adapter).to(loss.device)
        return outputs

    # ------------------------------------------------------------------ allocator delegation
    def _allocator(self):
        if self.rank_allocator is None:
            raise RuntimeError(
                f"adapter {self.active_adapter!r} is in inference mode (e.g. loaded with is_trainable=False); "
                f"it has no rank allocator"
            )
        return self.rank_allocator

    def set_optimizer(self, optimizer: Any) -> None:
        """Give the allocator the optimizer (posterior criteria reach IVON through ``.optimizer`` links)."""
        self._allocator().set_optimizer(optimizer)

    def update_and_allocate(self, global_step: int) -> None:
        """Update importance scores and mask E to the step's budget (see ``RankAllocator.update_and_allocate``)."""
        self._allocator().update_and_allocate(self.model, global_step)

    @property
    def current_budget(self) -> Optional[int]:
        """Total rank budget of the last ``update_and_allocate`` call (None before the first, or without one)."""
        return None if self.rank_allocator is None else self.rank_allocator.current_budget

    def kept_ranks(self) -> dict[str, int]:
        """``{module path: number of unmasked triplets}``; without an allocator, the non-zero entries of E."""
        if self.rank_allocator is not None:
            return self.rank_allocator.kept_ranks(self.model)
        return {path: int((layer.lora_E[self.active_adapter] != 0).sum()) for path, layer in self.adapter_layers()}

    def allocator_state_dict(self) -> dict:
        """Scores/EMA state and rank pattern of the allocator, for checkpoints (``torch.save``-able)."""
        return self._allocator().state_dict()

    def load_allocator_state_dict(self, state_dict: dict) -> None:
        """Restore what ``allocator_state_dict`` returned."""
        self._allocator().load_state_dict(state_dict)

    # ------------------------------------------------------------------ resizing
    def resize_modules_by_rank_pattern(self, rank_pattern: dict, adapter_name: Optional[str] = None) -> None:
        """Shrink layers to a rank pattern ``{"<path>.lora_E[.<adapter>]": [bool] * init_r}`` (``SVDLinear.resize``)."""
        adapter_name = adapter_name or self.active_adapter
        trainable = not self.peft_config[self.active_adapter].inference_mode
        for key, mask in rank_pattern.items():
            path = pattern_module_path(key, adapter_name)
            try:
                layer = self.model.get_submodule(path)
            except AttributeError:
                raise ValueError(f"rank_pattern key {key!r} names no module of the model") from None
            if not isinstance(layer, SVDLinear):
                raise ValueError(f"rank_pattern key {key!r} names a {type(layer).__name__}, not an AdaLoRA layer")
            layer.resize(mask.tolist() if hasattr(mask, "tolist") else list(mask))
            for p in layer.adapter_parameters():
                p.requires_grad_(trainable)


class VILoraModel(AdaLoraModel):
    """AdaLoRA whose allocator scores triplets by the IVON posterior (``config.criterion``, paper Sec. 3).

    Construction, forward and files are AdaLoRA's; the allocator reads ``config.criterion`` and needs
    ``set_optimizer(ivon_optimizer)`` before its first score update.
    """
