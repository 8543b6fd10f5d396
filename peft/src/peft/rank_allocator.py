"""AdaLoRA / VILoRA rank allocation: score every SVD triplet, keep the best ``budget`` of them.

Each adapted module holds ``ΔW = P·diag(λ)·Q`` as ``lora_B`` [out, r] · ``lora_E`` [r, 1] · ``lora_A`` [r, in].
Pruning triplet i zeroes ``λ_i`` (``lora_E[i]``) in place; A and B keep training and the tensors keep their
initial rank until the adapter is saved. The total number of kept triplets (the *budget*) falls from
``init_bgt = Σ init_r`` to ``target_bgt = target_r × #modules`` on a cubic schedule (:func:`budget_at_step`).

Which triplets survive is decided by an importance score (:mod:`peft.importance`): AdaLoRA's sensitivity
EMA, or (VILoRA) a function of IVON's posterior ``N(μ, σ²)`` read through the optimizer's public
``posterior_sigma(param)``, matched by parameter identity.

Call :meth:`RankAllocator.update_and_allocate` once per optimizer update, after ``optimizer.step()`` and
before ``optimizer.zero_grad()`` (the sensitivity score needs the gradients).
"""
from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .importance import ELEMENTWISE_SCORES, POSTERIOR_SCORES, SENSITIVITY, SensitivityScore, get_criterion
from .rank_pattern import strip_adapter_name

__all__ = ["RankAllocator", "budget_at_step", "mask_using_rank_pattern", "validate_schedule"]


def _check_schedule(init_bgt: int, target_bgt: int, tinit: int, tfinal: int, total_step: Any, deltaT: int) -> None:
    if total_step is None:
        raise ValueError("total_step is not set: set config.total_step (the number of optimizer updates) before training")
    if isinstance(total_step, bool) or not isinstance(total_step, numbers.Integral) or total_step <= 0:
        raise ValueError(f"total_step must be a positive int, got {total_step!r}")
    if tinit < 0 or tfinal < 0:
        raise ValueError(f"tinit and tfinal must be >= 0, got tinit={tinit}, tfinal={tfinal}")
    if deltaT < 1:
        raise ValueError(f"deltaT must be >= 1, got {deltaT}")
    last = total_step - max(tfinal, 1)
    if tinit >= last:
        raise ValueError(
            f"no budgeting phase: tinit={tinit} must be < total_step - max(tfinal, 1) = {total_step} - "
            f"{max(tfinal, 1)} = {last}; lower tinit/tfinal or train for more steps"
        )
    if not 0 <= target_bgt <= init_bgt:
        raise ValueError(f"target budget {target_bgt} must lie in [0, init budget {init_bgt}] (is target_r > init_r?)")


def budget_at_step(
    step: int, *, init_bgt: int, target_bgt: int, tinit: int, tfinal: int, total_step: int, deltaT: int
) -> tuple[int, bool]:
    """Rank budget at ``step`` and whether to mask there (AdaLoRA paper, eq. 12; PEFT's ``budget_schedule``).

    With ``T = total_step``, ``t_i = tinit``, ``t_f = tfinal`` and ``last = T − max(t_f, 1)``:

    * warm-up ``step <= t_i``: ``(init_bgt, False)``;
    * budgeting ``t_i < step < last``: ``budget = int((init_bgt − target_bgt)·m³ + target_bgt)`` with
      ``m = 1 − (step − t_i)/(T − t_f − t_i)``, masking when ``step % deltaT == 0``;
    * ``step >= last``: ``(target_bgt, True)``: the final budget is fixed at ``last`` and re-applied after.

    ``last = T − t_f`` for ``t_f >= 1``, where the cubic already equals target_bgt (PEFT forces the
    mask there too). For ``t_f = 0`` it is ``T − 1``, the last step a training loop reaches; PEFT with the
    paper's script never fixed the final budget in that case (README, fixed defect 9).

    Raises:
        ValueError: for a schedule without budgeting phase or other invalid arguments.
    """
    _check_schedule(init_bgt, target_bgt, tinit, tfinal, total_step, deltaT)
    if step <= tinit:
        return init_bgt, False
    if step >= total_step - max(tfinal, 1):
        return target_bgt, True
    m = 1.0 - (step - tinit) / (total_step - tfinal - tinit)
    budget = int((init_bgt - target_bgt) * (m**3) + target_bgt)
    return budget, step % deltaT == 0


def validate_schedule(config: Any, init_bgt: int | None = None, target_bgt: int | None = None) -> None:
    """Check ``config``'s schedule (total_step, tinit, tfinal, deltaT) early, with the numbers in the message.

    Call it as soon as ``config.total_step`` is known; :meth:`RankAllocator.update_and_allocate` calls it too.
    Budgets default to a valid pair when unknown.
    """
    init_bgt = 1 if init_bgt is None else init_bgt
    target_bgt = 0 if target_bgt is None else target_bgt
    _check_schedule(init_bgt, target_bgt, config.tinit, config.tfinal, config.total_step, config.deltaT)


@torch.no_grad()
def mask_using_rank_pattern(model: nn.Module, rank_pattern: Mapping[str, Any], adapter_name: str) -> None:
    """Zero ``lora_E`` entries that ``rank_pattern`` marks as pruned, in place.

    ``rank_pattern`` maps ``"<module path>.lora_E.<adapter>"`` or ``"<module path>.lora_E"`` to a list of
    ``init_r`` booleans (True = kept). Every ``lora_E.<adapter_name>`` parameter of ``model`` must have an entry.
    """
    if not rank_pattern:
        raise ValueError("rank_pattern is empty or None: there is no mask to apply")
    pattern = {strip_adapter_name(k, adapter_name): v for k, v in rank_pattern.items()}
    suffix = ".lora_E." + adapter_name
    found = 0
    for name, param in model.named_parameters():
        if not name.endswith(suffix):
            continue
        key = strip_adapter_name(name, adapter_name)
        if key not in pattern:
            raise ValueError(f"rank_pattern has no entry for {key!r} (keys look like {next(iter(rank_pattern))!r})")
        keep = torch.as_tensor(pattern[key], dtype=torch.bool, device=param.device).reshape(-1)
        if keep.numel() != param.shape[0]:
            raise ValueError(f"rank_pattern[{key!r}] has {keep.numel()} entries but {name} has rank {param.shape[0]}")
        param.masked_fill_(~keep.view(-1, 1), 0.0)
        found += 1
    if found == 0:
        raise ValueError(f"model has no '*{suffix}' parameters to mask")


def _find_posterior_optimizer(optimizer: Any) -> Any | None:
    """Follow ``.optimizer`` (e.g. accelerate's AcceleratedOptimizer) to an object with ``posterior_sigma``."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        if callable(getattr(optimizer, "posterior_sigma", None)):
            return optimizer
        seen.add(id(optimizer))
        optimizer = getattr(optimizer, "optimizer", None)
    return None


class RankAllocator:
    """Budget schedule + importance scores + masking for one AdaLoRA/VILoRA adapter.

    Args:
        model: the adapted transformers model; adapted modules are found by parameter name
            (``<path>.lora_A.<adapter>`` [r, in], ``.lora_B.<adapter>`` [out, r], ``.lora_E.<adapter>`` [r, 1]).
        config: AdaLoraConfig / VILoraConfig, held by reference (``total_step`` may be set later). Reads
            ``target_r, tinit, tfinal, deltaT, beta1, beta2, total_step, rank_pattern`` and
            ``criterion`` (default "sensitivity").
        adapter_name: the adapter to allocate.
    """

    def __init__(self, model: nn.Module, config: Any, adapter_name: str) -> None:
        self.config = config
        self.adapter_name = adapter_name
        self.criterion = getattr(config, "criterion", None) or SENSITIVITY
        get_criterion(self.criterion)
        suffix = ".lora_A." + adapter_name
        self.init_ranks: dict[str, int] = {
            name[: -len(suffix)]: p.shape[0] for name, p in model.named_parameters() if name.endswith(suffix)
        }
        if not self.init_ranks:
            raise ValueError(f"model has no '*{suffix}' parameters: nothing to allocate for adapter {adapter_name!r}")
        self.init_bgt = sum(self.init_ranks.values())
        self.target_bgt = config.target_r * len(self.init_ranks)
        if not 0 <= self.target_bgt <= self.init_bgt:
            raise ValueError(
                f"target_r={config.target_r} must lie in [0, init_r]: target budget {self.target_bgt} vs initial "
                f"budget {self.init_bgt} over {len(self.init_ranks)} modules"
            )
        # Sensitivity keeps EMAs; posterior scores are fresh functions of (μ, σ) and are cached between updates.
        self.sensitivity = SensitivityScore(config.beta1, config.beta2) if self.criterion == SENSITIVITY else None
        self.posterior_scores: dict[str, Tensor] = {}
        self.current_budget: int | None = None
        self.optimizer: Any = None

    # ----------------------------------------------------------------------------------------------- setup
    def set_optimizer(self, optimizer: Any) -> None:
        """Remember the optimizer. Posterior criteria need one exposing ``posterior_sigma(param)`` (IVON)."""
        if self.criterion != SENSITIVITY and _find_posterior_optimizer(optimizer) is None:
            raise ValueError(self._needs_ivon_message(optimizer))
        self.optimizer = optimizer

    def _needs_ivon_message(self, optimizer: Any) -> str:
        chain = []
        while optimizer is not None and len(chain) < 8:
            chain.append(type(optimizer).__name__)
            optimizer = getattr(optimizer, "optimizer", None)
        got = " -> ".join(chain) or "no optimizer"
        return (
            f"criterion {self.criterion!r} (VILoRA) needs the IVON optimizer: pass it via set_optimizer(opt) "
            f"(an object with posterior_sigma(param), possibly wrapped in .optimizer); got {got}"
        )

    def _param_names(self) -> tuple[str, str, str]:
        return tuple(f".{kind}.{self.adapter_name}" for kind in ("lora_A", "lora_B", "lora_E"))

    def _lora_params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """``lora_A/B/E`` parameters of this adapter, by name, in named-parameter order."""
        suffixes = self._param_names()
        return {n: p for n, p in model.named_parameters() if n.endswith(suffixes)}

    # ---------------------------------------------------------------------------------------------- scores
    def _update_sensitivity(self, model: nn.Module) -> None:
        for name, param in self._lora_params(model).items():
            self.sensitivity.update(name, param)

    @torch.no_grad()
    def _update_posterior(self, model: nn.Module) -> None:
        optimizer = _find_posterior_optimizer(self.optimizer)
        if optimizer is None:
            raise ValueError(self._needs_ivon_message(self.optimizer))
        score_fn = POSTERIOR_SCORES[self.criterion]
        means, sigmas = {}, {}
        for name, param in self._lora_params(model).items():
            try:
                sigmas[name] = optimizer.posterior_sigma(param).detach()
            except (KeyError, ValueError) as err:
                raise ValueError(f"the optimizer has no posterior for {name} (is it optimised by IVON?): {err}") from err
            means[name] = param.detach()
        if score_fn in ELEMENTWISE_SCORES and len(means) > 1:
            # one evaluation over all tensors instead of ~20 small float64 kernels per tensor: the score of an
            # element depends on that element only, so concatenating changes nothing but the dispatch count
            flat = score_fn(torch.cat([m.reshape(-1) for m in means.values()]),
                            torch.cat([s.reshape(-1) for s in sigmas.values()]))
            pieces = flat.split([m.numel() for m in means.values()])
            self.posterior_scores = {n: piece.view_as(m) for (n, m), piece in zip(means.items(), pieces)}
        else:  # a user-added score may look at whole tensors
            self.posterior_scores = {n: score_fn(means[n], sigmas[n]) for n in means}

    def _element_score(self, name: str) -> Tensor:
        if self.sensitivity is not None:
            return self.sensitivity.score(name)
        return self.posterior_scores[name]

    def _have_scores(self, model: nn.Module) -> bool:
        names = self._lora_params(model)
        held = self.sensitivity.exp_avg_ipt if self.sensitivity is not None else self.posterior_scores
        return all(n in held for n in names)

    def triplet_scores(self, model: nn.Module) -> dict[str, Tensor]:
        """Per-module triplet importance ``S_i = s(λ_i) + mean_j s(Q_ij) + mean_k s(P_ki)`` (AdaLoRA paper, eq. 11).

        Returns ``{module path: Tensor[r]}`` in named-parameter order, from the current element scores.
        """
        a_suf, b_suf, e_suf = self._param_names()
        parts: dict[str, dict[str, Tensor]] = {}
        for name in self._lora_params(model):
            for suf, kind in ((a_suf, "A"), (b_suf, "B"), (e_suf, "E")):
                if name.endswith(suf):
                    parts.setdefault(name[: -len(suf)], {})[kind] = self._element_score(name)
        scores = {}
        for path, p in parts.items():
            if len(p) != 3:
                raise ValueError(f"module {path} lacks one of lora_A/lora_B/lora_E for adapter {self.adapter_name!r}")
            ab = p["A"].mean(dim=1) + p["B"].mean(dim=0)  # row means of A [r,in], column means of B [out,r]
            scores[path] = p["E"].reshape(-1) + ab
        return scores

    @torch.no_grad()
    def mask_to_budget(self, model: nn.Module, budget: int) -> dict[str, list[bool]]:
        """Zero the ``init_bgt − budget`` least important triplets' ``lora_E`` entries in place.

        The threshold is the k-th smallest triplet score over all modules; every triplet with ``S <= threshold``
        is pruned, so ties at the threshold prune more than k (as in AdaLoRA). ``k = 0`` prunes nothing.

        Returns:
            rank pattern ``{"<path>.lora_E.<adapter>": [bool]*r}`` (True = kept), in named-parameter order.
        """
        scores = self.triplet_scores(model)
        k = self.init_bgt - budget
        if k > 0:
            flat = torch.cat([s.reshape(-1) for s in scores.values()])
            threshold = flat.kthvalue(k).values.item()
            if k < flat.numel() and flat.max().item() <= threshold:  # pruning all was not asked for
                warnings.warn(
                    f"all {flat.numel()} triplet scores are equal ({threshold:g}), so every triplet is pruned; with the "
                    "sensitivity criterion this means zero gradients (was zero_grad() called before "
                    "update_and_allocate?)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        else:
            threshold = float("-inf")
        lora = self._lora_params(model)
        pattern = {}
        for path, s in scores.items():
            e_name = f"{path}.lora_E.{self.adapter_name}"
            keep = s > threshold
            lora[e_name].masked_fill_(~keep.view(-1, 1).to(lora[e_name].device), 0.0)
            pattern[e_name] = keep.tolist()
        return pattern

    # ------------------------------------------------------------------------------------------------ step
    def update_and_allocate(self, model: nn.Module, global_step: int) -> None:
        """One allocation step, as in PEFT's AdaLoRA and the paper's VILoRA; call after ``optimizer.step()``,
        before ``zero_grad()``.

        With ``T = total_step`` and ``last = T − max(tfinal, 1)``:

        * scores: sensitivity EMAs are updated at every ``step < T − tfinal``; posterior scores are recomputed
          when ``tinit < step <= T − tfinal`` and ``step % deltaT == 0`` (no EMA);
        * ``step < last``: mask to :func:`budget_at_step` when it says so and store ``config.rank_pattern``;
        * ``step == last``: mask to ``target_bgt``, store the final pattern and reset the scores;
        * ``step > last``: re-apply ``config.rank_pattern`` (the optimizer keeps moving masked entries).
        """
        cfg = self.config
        validate_schedule(cfg, self.init_bgt, self.target_bgt)
        total, tinit, tfinal = cfg.total_step, cfg.tinit, cfg.tfinal
        last = total - max(tfinal, 1)
        step = global_step

        if step > last:
            if not cfg.rank_pattern:
                raise RuntimeError(
                    f"step {step} is in the final phase (after step {last}) but config.rank_pattern is empty: "
                    "update_and_allocate was not called at the final masking step, and no allocator state was loaded"
                )
            mask_using_rank_pattern(model, cfg.rank_pattern, self.adapter_name)
            self.current_budget = self.target_bgt
            return

        if self.sensitivity is not None:
            if step < total - tfinal:
                self._update_sensitivity(model)
        elif tinit < step <= total - tfinal and step % cfg.deltaT == 0:
            self._update_posterior(model)

        budget, mask_now = budget_at_step(
            step,
            init_bgt=self.init_bgt,
            target_bgt=self.target_bgt,
            tinit=tinit,
            tfinal=tfinal,
            total_step=total,
            deltaT=cfg.deltaT,
        )
        self.current_budget = budget
        if mask_now:
            if not self._have_scores(model):
                if self.sensitivity is not None:
                    raise RuntimeError(
                        f"no sensitivity scores at step {step}: update_and_allocate must run at every step before "
                        "masking, or the allocator state must be loaded when resuming"
                    )
                self._update_posterior(model)  # a posterior score needs no history: compute it now
            cfg.rank_pattern = self.mask_to_budget(model, budget)
        if step == last:
            self.reset_ipt()

    def reset_ipt(self) -> None:
        """Forget all importance state (done after the final mask)."""
        if self.sensitivity is not None:
            self.sensitivity.reset()
        self.posterior_scores = {}

    # ------------------------------------------------------------------------------------------- reporting
    def kept_ranks(self, model: nn.Module) -> dict[str, int]:
        """``{module path: number of kept triplets}`` according to ``config.rank_pattern`` (init_r before any mask)."""
        pattern = {strip_adapter_name(k, self.adapter_name): v for k, v in (self.config.rank_pattern or {}).items()}
        suffix = ".lora_E." + self.adapter_name
        kept = {}
        for name, param in model.named_parameters():
            if name.endswith(suffix):
                key = strip_adapter_name(name, self.adapter_name)
                kept[name[: -len(suffix)]] = int(sum(map(bool, pattern[key]))) if key in pattern else param.shape[0]
        return kept

    def state_dict(self) -> dict[str, Any]:
        """torch.save-able allocator state: scores/EMAs, rank pattern, current budget (README, fixed defect 8)."""
        return {
            "criterion": self.criterion,
            "adapter_name": self.adapter_name,
            "init_bgt": self.init_bgt,
            "target_bgt": self.target_bgt,
            "current_budget": self.current_budget,
            "rank_pattern": _copy_pattern(self.config.rank_pattern),
            "sensitivity": None if self.sensitivity is None else self.sensitivity.state_dict(),
            "posterior_scores": {k: v.clone() for k, v in self.posterior_scores.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; ``config.rank_pattern`` is restored too."""
        for key, mine in (("criterion", self.criterion), ("init_bgt", self.init_bgt), ("target_bgt", self.target_bgt)):
            if state[key] != mine:
                raise ValueError(f"allocator state has {key}={state[key]!r} but this allocator has {mine!r}")
        self.current_budget = state["current_budget"]
        self.config.rank_pattern = _copy_pattern(state["rank_pattern"])
        if self.sensitivity is not None:
            self.sensitivity.load_state_dict(state["sensitivity"])
        self.posterior_scores = {k: v.clone() for k, v in state["posterior_scores"].items()}


def _copy_pattern(pattern: Mapping[str, Any] | None) -> dict[str, list[bool]] | None:
    return None if pattern is None else {k: [bool(x) for x in v] for k, v in pattern.items()}
