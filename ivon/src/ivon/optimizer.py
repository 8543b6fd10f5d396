# SPDX-License-Identifier: GPL-3.0-or-later
"""IVON: Improved Variational Online Newton (Shen et al., ICML 2024), with a per-parameter posterior API.

The optimizer keeps a diagonal Gaussian posterior N(μ, σ²) over the parameters, with

    σ = 1 / sqrt(ess · (h + δ))        (h: Hessian estimate, ess: effective sample size, δ: weight decay)

Training alternates two phases:

1. ``with opt.sampled_params(train=True): loss = f(θ); loss.backward()``: the parameters are replaced by a
   sample θ = μ + ε̃ (ε̃ = σ·ε, ε ~ N(0, I)) for the body and restored to μ on exit; the gradient g at the
   sample is recorded, together with ε̃·g (or g²) for the Hessian estimate.
2. ``opt.step()``: from the Monte-Carlo means of those, update momentum m, Hessian h and mean μ (see
   :func:`momentum_update`, :func:`hessian_estimate`, :func:`hessian_update`, :func:`param_update`).

The arithmetic reproduces ivon-opt 0.1.3 bit for bit (same RNG draws, same float32 operations in the
same order, scalars computed in Python double). Differences from 0.1.3, all fixes or additions:
``current_step`` is part of the state dict, ``sampled_params`` restores the means when its body raises,
misuse raises clear errors, and σ is reachable per parameter (``posterior_sigma``) instead of by
slicing a flat buffer.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import Tensor

__all__ = [
    "IVON",
    "unwrap_ivon",
    "momentum_update",
    "hessian_estimate",
    "hessian_update",
    "param_update",
]

HESS_APPROXES = ("price", "gradsq")

# On CPU, elementwise work is done in slices of this many elements (1 MiB of float32), so that the ~20
# passes of an update run in cache rather than streaming each vector from main memory again: about 2x
# faster at 1e7 parameters. (On accelerators slicing would only multiply kernel launches.) Slicing never
# changes a result: every operation is elementwise.
_CHUNK = 1 << 18


# ----------------------------------------------------------------------------------------------------
# The math, as pure functions (readable form; the optimizer runs the fused in-place form below, and
# the tests pin that both agree bit for bit). Scalars are Python floats: each tensor-scalar operation
# rounds the scalar to the tensor's dtype once, exactly as ivon-opt does.
# ----------------------------------------------------------------------------------------------------


def momentum_update(momentum: Tensor, avg_grad: Tensor, beta1: float) -> Tensor:
    """m' = β1·m + (1 − β1)·ḡ."""
    return beta1 * momentum + (1.0 - beta1) * avg_grad


def hessian_estimate(
    hess_approx: str, avg_sample: Tensor, hess: Tensor, ess: float, weight_decay: float
) -> Tensor:
    """Per-element Hessian estimate f from the Monte-Carlo mean ``avg_sample``.

    price (reparametrisation trick):  f = (mean(ε̃·g) · (h + δ)) · ess, where ε̃ = θ − μ is the noise;
    gradsq (squared gradients):       f = mean(g²) · ess.
    """
    if hess_approx == "price":
        return avg_sample * (hess + weight_decay) * ess
    return avg_sample * ess


def hessian_update(hess: Tensor, estimate: Tensor, beta2: float, weight_decay: float) -> Tensor:
    """h' = β2·h + (1 − β2)·f + ½(1 − β2)²·(h − f)² / (h + δ), with the old h on the right.

    The third term keeps h positive (IVON paper, eq. 9).
    """
    return (
        beta2 * hess
        + (1.0 - beta2) * estimate
        + (0.5 * (1.0 - beta2) ** 2) * (hess - estimate).square() / (hess + weight_decay)
    )


def param_update(
    mean: Tensor,
    momentum: Tensor,
    hess: Tensor,
    lr: float,
    weight_decay: float,
    debias: float,
    clip_radius: float,
) -> Tensor:
    """μ' = μ − lr·clip((m/d + δ·μ) / (h + δ), ±clip_radius), with the *new* h.

    ``lr`` is the effective rate (``lr·(hess_init + δ)`` when IVON rescales it) and ``d = 1 − β1^t`` the
    momentum debiasing factor (1 without debiasing).
    """
    direction = (momentum / debias + weight_decay * mean) / (hess + weight_decay)
    return mean - lr * torch.clip(direction, min=-clip_radius, max=clip_radius)


def _fused_update_(
    mean: Tensor,
    momentum: Tensor,
    hess: Tensor,
    avg_grad: Tensor,
    avg_sample: Tensor,
    scratch: Tensor,
    *,
    hess_approx: str,
    beta1: float,
    beta2: float,
    ess: float,
    weight_decay: float,
    lr: float,
    debias: Tensor,
    clip_radius: float,
) -> None:
    """One IVON update in place: the four pure functions above, same roundings in the same order.

    ``mean``, ``momentum`` and ``hess`` are updated; ``avg_grad``, ``avg_sample`` and ``scratch`` (all
    the same shape) are overwritten. ``debias`` is d as a 0-dim tensor of the state's dtype.
    ``addcdiv_(t1, t2, value=v)`` computes ``self + (v·t1)/t2`` with exactly the roundings of the
    separate operations, so it fuses three passes into one (``addcmul_`` and ``add_(alpha=)`` would
    not: they may round once for a multiply-add).
    """
    # m' = β1·m + (1−β1)·ḡ
    momentum.mul_(beta1).add_(avg_grad.mul_(1.0 - beta1))
    # f, then h' = (β2·h + (1−β2)·f) + (½(1−β2)²·(h−f)²)/(h+δ) from the old h
    h_plus_wd = torch.add(hess, weight_decay, out=scratch)
    f = avg_sample
    if hess_approx == "price":
        f.mul_(h_plus_wd)
    f.mul_(ess)
    square = torch.sub(hess, f, out=avg_grad).square_()
    hess.mul_(beta2).add_(f.mul_(1.0 - beta2)).addcdiv_(square, h_plus_wd, value=0.5 * (1.0 - beta2) ** 2)
    # μ' = μ − lr·clip((δ·μ + m/d)/(h'+δ)) with the new h
    h_plus_wd = torch.add(hess, weight_decay, out=scratch)
    direction = torch.mul(mean, weight_decay, out=avg_grad).addcdiv_(momentum, debias).div_(h_plus_wd)
    if clip_radius != math.inf:  # clamp(x, -inf, inf) is the identity, NaN included
        direction.clamp_(-clip_radius, clip_radius)
    mean.sub_(direction.mul_(lr))


def _chunks(*tensors: Tensor) -> Iterable[tuple[Tensor, ...]]:
    """Aligned slices of equally long flat tensors (the whole tensors off-CPU or when short)."""
    if tensors[0].numel() <= _CHUNK or tensors[0].device.type != "cpu":
        return (tensors,)
    return zip(*(t.split(_CHUNK) for t in tensors))


# ----------------------------------------------------------------------------------------------------
# The optimizer
# ----------------------------------------------------------------------------------------------------

# name -> (test, description of the valid range); ranges are those of ivon-opt 0.1.3.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: v >= 0.0, ">= 0"),
    "mc_samples": (lambda v: v >= 1, ">= 1"),
    "weight_decay": (lambda v: v >= 0.0, ">= 0"),
    "hess_init": (lambda v: v > 0.0, "> 0"),
    "ess": (lambda v: v > 0.0, "> 0"),
    "clip_radius": (lambda v: v > 0.0, "> 0"),
    "beta1": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "beta2": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
}


def _check_hyperparameter(name: str, value: Any, where: str = "") -> None:
    test, valid = _RANGES[name]
    try:
        ok = bool(test(value))  # NaN fails every comparison, so it is rejected too
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"IVON: invalid {name}{where}: {value!r}; {name} must be {valid}")


def check_hyperparameters(**values: Any) -> None:
    """Raise ValueError, as ``IVON(...)`` would, if any given hyperparameter (``lr``, ``ess``, ``hess_init``,
    ``beta1``, ``beta2``, ``weight_decay``, ``mc_samples``, ``clip_radius``) is out of its range; NaN is.

    For programs that check their settings before building a model and the optimizer.
    """
    for name, value in values.items():
        if name not in _RANGES:
            raise ValueError(f"IVON: unknown hyperparameter {name!r}; known: {', '.join(_RANGES)}")
        _check_hyperparameter(name, value)


# Attributes that are neither defaults, state nor param groups, yet must survive copy.deepcopy/pickle.
_SETTINGS = (
    "mc_samples", "hess_approx", "sync", "debias", "rescale_lr", "current_step", "_numel", "_device", "_dtype",
)  # fmt: skip


class IVON(torch.optim.Optimizer):
    """Improved Variational Online Newton, numerically identical to ivon-opt 0.1.3.

    Args:
        params: parameters or parameter groups; every group may override ``lr, ess, hess_init, beta1,
            beta2, weight_decay, mc_samples, clip_radius``.
        lr: learning rate (>= 0); with ``rescale_lr`` the step uses ``lr·(hess_init + weight_decay)``.
        ess: effective sample size (> 0), usually the training-set size.
        hess_init: initial Hessian h₀ (> 0).
        beta1, beta2: decay of the gradient momentum and of the Hessian (in [0, 1]).
        weight_decay: δ (>= 0), the prior precision per sample.
        mc_samples: gradient samples per step when ``step`` gets a closure (>= 1).
        hess_approx: ``"price"`` (reparametrisation, default) or ``"gradsq"`` (squared gradients).
        clip_radius: elementwise clipping of the preconditioned step (> 0).
        sync: average the gradient statistics over ``torch.distributed`` workers before each update.
        debias: divide the momentum by 1 − β1^t.
        rescale_lr: multiply lr by (hess_init + weight_decay).
        device: where the optimizer's buffers live; default: the parameters' device.

    Per group the state is ``group["momentum"]`` and ``group["hess"]``: flat vectors over the group's
    parameters in order (as in ivon-opt, so state dicts are interchangeable); use :meth:`param_state`
    and :meth:`posterior_sigma` to read them per parameter.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        ess: float,
        hess_init: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.99999,
        weight_decay: float = 1e-4,
        mc_samples: int = 1,
        hess_approx: str = "price",
        clip_radius: float = float("inf"),
        sync: bool = False,
        debias: bool = True,
        rescale_lr: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, mc_samples=mc_samples, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
            hess_init=hess_init, ess=ess, clip_radius=clip_radius,
        )  # fmt: skip
        for name, value in defaults.items():
            _check_hyperparameter(name, value)
        if hess_approx not in HESS_APPROXES:
            raise ValueError(
                f"IVON: invalid hess_approx: {hess_approx!r}; hess_approx must be 'price' or 'gradsq'"
            )
        self._ready = False  # add_param_group (called by the base class) creates buffers only once ready
        super().__init__(params, defaults)

        self.mc_samples = mc_samples
        self.hess_approx = hess_approx
        self.sync = sync
        self.debias = debias
        self.rescale_lr = rescale_lr
        self.current_step = 0

        all_params = [p for group in self.param_groups for p in group["params"]]
        devices = {p.device for p in all_params}
        dtypes = {p.dtype for p in all_params}
        if len(devices) > 1:
            raise ValueError(f"IVON: all parameters must be on one device, got {sorted(map(str, devices))}")
        if len(dtypes) > 1:
            raise ValueError(f"IVON: all parameters must have one dtype, got {sorted(map(str, dtypes))}")
        self._device = devices.pop() if devices else torch.device("cpu")
        self._dtype = dtypes.pop() if dtypes else torch.get_default_dtype()
        if device not in (None, ""):  # "" was the "no device" value of the paper's fork
            self._device = torch.device(device)
        for group in self.param_groups:
            self._init_group(group, self._device)
        self._numel = sum(group["numel"] for group in self.param_groups)

        self._init_caches()
        self._reset_samples()
        self._ready = True

    def _init_caches(self) -> None:
        """Working memory that is not state: rebuilt from the parameters whenever needed."""
        self._means: list[Optional[tuple[Tensor, tuple[Tensor, ...], tuple[int, ...]]]] = []
        self._buffers: dict[str, Tensor] = {}
        self._noise: Optional[Tensor] = None  # scaled noise of the sample being drawn, all groups
        self._saved_means: Optional[list[tuple[Tensor, ...]]] = None  # set inside sampled_params
        self._index: Optional[dict[int, tuple[Tensor, int, int, int]]] = None
        self._view_cache: dict[tuple[int, int], tuple[Tensor, ...]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # torch pickles only defaults/state/param_groups; IVON's settings must survive copy/pickle too
        state = super().__getstate__()
        state.update({k: getattr(self, k) for k in _SETTINGS})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_means" not in self.__dict__:  # unpickled or copied, not load_state_dict
            self._init_caches()
            self._ready = True

    # -- setup ---------------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, validated like the constructor's arguments; its state is created with it."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        where = f" (param group {len(self.param_groups) - 1})"
        for name in _RANGES:
            _check_hyperparameter(name, group[name], where)
        if getattr(self, "_ready", False):  # groups given to the constructor are set up there
            if self.state["count"] or self._saved_means is not None:
                raise RuntimeError("IVON.add_param_group() between a gradient sample and step() is not supported")
            dtypes = {p.dtype for p in group["params"]} - {self._dtype}
            if dtypes:
                raise ValueError(f"IVON: param group{where} has dtype {dtypes.pop()}, expected {self._dtype}")
            self._init_group(group, self.param_groups[0]["hess"].device)
            self._numel += group["numel"]
            self._index = None

    def _init_group(self, group: dict[str, Any], device: torch.device) -> None:
        group["numel"] = sum(p.numel() for p in group["params"])
        group["momentum"] = torch.zeros(group["numel"], device=device, dtype=self._dtype)
        group["hess"] = torch.full((group["numel"],), float(group["hess_init"]), device=device, dtype=self._dtype)

    def _reset_samples(self) -> None:
        self.state["count"] = 0
        self.state["avg_grad"] = None
        self.state["avg_nxg"] = None
        self.state["avg_gsq"] = None

    def _buffer(self, name: str, like: Tensor, numel: int) -> Tensor:
        """A reusable flat work buffer (contents undefined) with ``like``'s device and dtype."""
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.device != like.device or buf.dtype != like.dtype:
            buf = torch.empty(max(numel, 1), device=like.device, dtype=like.dtype)
            self._buffers[name] = buf
            self._view_cache.clear()
        return buf[:numel]

    def _views(self, flat: Tensor, gi: int) -> tuple[Tensor, ...]:
        """Views of ``flat`` (group ``gi``'s slice of a work buffer) shaped like the group's parameters;
        cached, as buffers and parameters rarely change."""
        key = (flat.data_ptr(), gi)
        views = self._view_cache.get(key)
        if views is None:
            means = self._means[gi][1]
            views = tuple(v.view_as(m) for v, m in zip(flat.split([m.numel() for m in means]), means))
            self._view_cache[key] = views
        return views

    def _group_means(self, gi: int) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The group's means as one flat tensor whose slices *are* the parameters' data.

        After the first call every ``p.data`` is a view into this flat tensor, so updates happen in place
        and no concatenation is needed. If a parameter's data was replaced since (e.g. ``model.to()``),
        the flat tensor is rebuilt from the current data.
        """
        group = self.param_groups[gi]
        params = group["params"]
        while len(self._means) <= gi:
            self._means.append(None)
        cached = self._means[gi]
        if cached is not None:
            flat, views, ptrs = cached
            if len(ptrs) == len(params) and all(
                p.data_ptr() == ptr and p.shape == v.shape and p.is_contiguous()
                for p, v, ptr in zip(params, views, ptrs)
            ):
                return flat, views
        hess = group["hess"]
        if group["numel"] != sum(p.numel() for p in params):
            raise RuntimeError(
                f"IVON: param group {gi} now has {sum(p.numel() for p in params)} elements, "
                f"its state has {group['numel']}"
            )
        for p in params:
            if p.device != hess.device or p.dtype != hess.dtype:
                raise RuntimeError(
                    f"IVON: parameter of shape {tuple(p.shape)} is {p.device}/{p.dtype} but the optimizer "
                    f"state is {hess.device}/{hess.dtype}; move the model before training "
                    f"(or construct IVON with device=...)"
                )
        if params:
            flat = torch.cat([p.detach().reshape(-1) for p in params])
        else:
            flat = torch.empty(0, device=hess.device, dtype=hess.dtype)
        views = tuple(v.view_as(p) for v, p in zip(flat.split([p.numel() for p in params]), params))
        for p, v in zip(params, views):
            p.data = v
        self._means[gi] = (flat, views, tuple(p.data_ptr() for p in params))
        self._view_cache.clear()
        return flat, views

    def _group_slices(self) -> Iterator[tuple[int, dict[str, Any], slice]]:
        offset = 0
        for gi, group in enumerate(self.param_groups):
            yield gi, group, slice(offset, offset + group["numel"])
            offset += group["numel"]

    # -- sampling ------------------------------------------------------------------------------------

    @contextmanager
    def sampled_params(self, train: bool = False) -> Iterator[None]:
        """Replace every parameter by a posterior sample θ = μ + ε/sqrt(ess·(h + δ)) for the body.

        On entry one ``randn`` of the group's full size is drawn per group, in group order, on the state's
        device (so the RNG stream matches ivon-opt). On exit, also when the body raises, the parameters
        are the means again. With ``train=True`` and a normal exit, the gradients ``p.grad`` (computed
        by the body's ``backward``) are added to the running Monte-Carlo averages used by :meth:`step`;
        ``p.grad`` is left as is, so call ``zero_grad`` between samples.
        """
        if self._saved_means is not None:
            raise RuntimeError("IVON.sampled_params() cannot be nested")
        with torch.no_grad():
            means, samples = self._draw_samples()
        self._set_data(samples)
        self._saved_means = means
        try:
            yield
        finally:
            self._set_data(means)
            self._saved_means = None
        if train:
            with torch.no_grad():
                self._accumulate_gradients()

    def _set_data(self, views_per_group: list[tuple[Tensor, ...]]) -> None:
        for group, views in zip(self.param_groups, views_per_group):
            for p, v in zip(group["params"], views):
                p.data = v

    def _draw_samples(self) -> tuple[list[tuple[Tensor, ...]], list[tuple[Tensor, ...]]]:
        """Draw θ = μ + ε̃ into the sample buffer; return (mean views, sample views) per group."""
        means = [self._group_means(gi) for gi in range(len(self.param_groups))]
        like = self.param_groups[0]["hess"]
        noise = self._buffer("noise", like, self._numel)
        sample = self._buffer("sample", like, self._numel)
        samples = []
        for gi, group, sl in self._group_slices():
            noise_g, sample_g = noise[sl], sample[sl]
            noise_g.normal_()  # == torch.randn(numel): same generator, same size, same draws
            wd, ess = group["weight_decay"], group["ess"]
            for n, s, h, mu in _chunks(noise_g, sample_g, group["hess"], means[gi][0]):
                n.div_(torch.add(h, wd, out=s).mul_(ess).sqrt_())  # ε̃ = ε / sqrt(ess·(h + δ))
                torch.add(mu, n, out=s)
            samples.append(self._views(sample_g, gi))
        self._noise = noise
        return [views for _, views in means], samples

    def _accumulate_gradients(self) -> None:
        """Fold the current ``p.grad`` into the running means of g and of ε̃·g (price) or g² (gradsq)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad and p.grad is None:
                    raise RuntimeError(
                        f"IVON: parameter of shape {tuple(p.shape)} requires grad but has no .grad on leaving "
                        "sampled_params(train=True): backward() was not called inside the context, or the "
                        "loss does not depend on this parameter (freeze it with requires_grad_(False))"
                    )
        noise = self._noise
        count = self.state["count"] + 1
        first = count == 1 or self.state["avg_grad"] is None
        # the first sample's gradient *is* the average; later ones go through the (now free) sample buffer
        grad = self._buffer("avg_grad" if first else "sample", noise, self._numel)
        for gi, group, sl in self._group_slices():
            dsts, grads = [], []
            for dst, p in zip(self._views(grad[sl], gi), group["params"]):
                if p.requires_grad:
                    dsts.append(dst)
                    grads.append(p.grad)
                else:  # frozen parameters contribute zeros, as in ivon-opt
                    dst.zero_()
            if dsts:
                torch._foreach_copy_(dsts, grads)
        key = "avg_nxg" if self.hess_approx == "price" else "avg_gsq"
        other = noise if self.hess_approx == "price" else grad
        if first:
            self.state["avg_grad"] = grad
            self.state[key] = torch.mul(other, grad, out=self._buffer(key, noise, self._numel))
        else:
            # Welford mean: avg ← avg + (new − avg)/count; ``noise`` is free to hold the new product.
            product = torch.mul(other, grad, out=noise)
            for new, avg in ((grad, self.state["avg_grad"]), (product, self.state[key])):
                avg.add_(torch.sub(new, avg, out=new).div_(count))
        self.state["count"] = count
        self._noise = None

    # -- update --------------------------------------------------------------------------------------

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Update momentum, Hessian and means from the gradient samples collected since the last step.

        With a ``closure`` (which must itself enter ``sampled_params(train=True)`` and call backward),
        it is called ``mc_samples`` times first and the mean of its losses is returned.
        """
        if self._saved_means is not None:
            raise RuntimeError("IVON.step() called inside sampled_params(); leave the context first")
        loss = None
        if closure is not None:
            losses = []
            for _ in range(self.mc_samples):
                with torch.enable_grad():
                    losses.append(closure())
            loss = sum(losses) / self.mc_samples
        if self.state["count"] == 0 or self.state["avg_grad"] is None:
            raise RuntimeError(
                "IVON.step() called without a gradient sample; run forward/backward inside "
                "sampled_params(train=True) first"
            )
        with torch.no_grad():
            if self.sync and torch.distributed.is_available() and torch.distributed.is_initialized():
                self._all_reduce_samples()
            self._update()
        self._reset_samples()
        return loss

    def _all_reduce_samples(self) -> None:
        world = torch.distributed.get_world_size()
        key = "avg_nxg" if self.hess_approx == "price" else "avg_gsq"  # 0.1.3 synced avg_nxg only
        for name in ("avg_grad", key):
            torch.distributed.all_reduce(self.state[name])
            self.state[name].div_(world)

    def _update(self) -> None:
        self.current_step += 1
        key = "avg_nxg" if self.hess_approx == "price" else "avg_gsq"
        avg_grad, avg_sample = self.state["avg_grad"], self.state[key]
        on_cpu = avg_grad.device.type == "cpu"
        scratch = self._buffer("scratch", avg_grad, min(self._numel, _CHUNK) if on_cpu else self._numel)
        for gi, group, sl in self._group_slices():
            mean, _ = self._group_means(gi)
            beta1, wd = group["beta1"], group["weight_decay"]
            debias = 1.0 - beta1**self.current_step if self.debias else 1.0
            hyper = dict(
                hess_approx=self.hess_approx, beta1=beta1, beta2=group["beta2"], ess=group["ess"],
                weight_decay=wd, clip_radius=group["clip_radius"],
                lr=group["lr"] * (group["hess_init"] + wd) if self.rescale_lr else group["lr"],
                debias=torch.full((), debias, dtype=mean.dtype, device=mean.device),
            )  # fmt: skip
            tensors = (mean, group["momentum"], group["hess"], avg_grad[sl], avg_sample[sl])
            for chunk in _chunks(*tensors):
                _fused_update_(*chunk, scratch[: chunk[0].numel()], **hyper)

    # -- state dict ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The torch state dict (per group ``momentum``, ``hess``, ``numel`` and hyperparameters, as in
        ivon-opt) plus ``state["current_step"]``. Tensors are copies, so later steps do not alter it."""
        sd = super().state_dict()
        sd["state"] = {k: v.clone() if isinstance(v, Tensor) else v for k, v in sd["state"].items()}
        sd["state"]["current_step"] = self.current_step
        for group in sd["param_groups"]:
            for k in ("momentum", "hess"):
                if isinstance(group.get(k), Tensor):
                    group[k] = group[k].clone()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` or from ivon-opt (which has no ``current_step``:
        it then restarts at 0, as ivon-opt would)."""
        state_dict = dict(state_dict)
        state = dict(state_dict.get("state", {}))
        current_step = int(state.pop("current_step", 0))
        state_dict["state"] = state
        super().load_state_dict(state_dict)
        for gi, group in enumerate(self.param_groups):
            numel = sum(p.numel() for p in group["params"])
            for k in ("momentum", "hess"):
                if group.get(k) is None or group[k].numel() != numel:
                    raise ValueError(
                        f"IVON: loaded state of param group {gi} has no {k!r} of {numel} elements"
                    )
            group["numel"] = numel
        for k, v in list(self.state.items()):
            if isinstance(v, Tensor):  # the base class shares these with the caller's dict
                self.state[k] = v.clone()
        self.current_step = current_step
        self._numel = sum(group["numel"] for group in self.param_groups)
        self._index = None

    # -- posterior API -------------------------------------------------------------------------------

    def _locate(self, param: Tensor) -> tuple[dict[str, Any], int, int]:
        """(group, offset, numel) of a parameter in its group's flat state, matched by identity of the
        Parameter object (which stays the same while its ``.data`` is swapped)."""
        entry = self._index.get(id(param)) if self._index is not None else None
        if entry is None or entry[0] is not param:  # unknown, or the groups changed: rebuild once
            self._index = {}
            for gi, group in enumerate(self.param_groups):
                offset = 0
                for p in group["params"]:
                    self._index.setdefault(id(p), (p, gi, offset, p.numel()))
                    offset += p.numel()
            entry = self._index.get(id(param))
        if entry is None or entry[0] is not param:
            shape = tuple(param.shape) if isinstance(param, Tensor) else None
            raise KeyError(f"IVON: tensor of shape {shape} is not a parameter of this optimizer")
        _, gi, offset, numel = entry
        return self.param_groups[gi], offset, numel

    def posterior_sigma(self, param: Tensor) -> Tensor:
        """σ = 1/sqrt(ess·(h + δ)) of ``param``'s elements, shaped like ``param`` (a new tensor).

        ``ess`` and δ = ``weight_decay`` are those of the parameter's group; h is the state after the
        latest :meth:`step`.
        """
        group, offset, numel = self._locate(param)
        hess = group["hess"][offset : offset + numel]
        return _sigma(hess, group["ess"], group["weight_decay"]).view_as(param)

    def posteriors(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yield ``(param, mean, sigma)`` for every parameter, group by group, all shaped like ``param``.

        ``mean`` is μ (detached; the saved mean even inside :meth:`sampled_params`).
        """
        for gi, group in enumerate(self.param_groups):
            sigma = _sigma(group["hess"], group["ess"], group["weight_decay"])
            params = group["params"]
            means = self._saved_means[gi] if self._saved_means is not None else [p.detach() for p in params]
            sigmas = sigma.split([p.numel() for p in params])
            for p, mu, s in zip(params, means, sigmas):
                yield p, mu, s.view_as(p)

    def param_state(self, param: Tensor) -> dict[str, Tensor]:
        """``{"momentum": m, "hess": h}`` of ``param``, shaped like it: writable views of the group's
        state (valid until the next ``load_state_dict``)."""
        group, offset, numel = self._locate(param)
        return {k: group[k][offset : offset + numel].view_as(param) for k in ("momentum", "hess")}

    @torch.no_grad()
    def hess_stats(self) -> list[dict[str, float]]:
        """Per group: mean, std (unbiased), min, median (lower) and max of the Hessian h, for logging.

        NaN where undefined (std of one element, anything of an empty group).
        """
        stats = []
        for group in self.param_groups:
            h = group["hess"]
            if h.numel() == 0:
                stats.append(dict.fromkeys(("mean", "std", "min", "median", "max"), math.nan))
                continue
            stats.append(
                dict(
                    mean=h.mean().item(), std=h.std().item() if h.numel() > 1 else math.nan,
                    min=h.min().item(), median=h.median().item(), max=h.max().item(),
                )  # fmt: skip
            )
        return stats


def _sigma(hess: Tensor, ess: float, weight_decay: float) -> Tensor:
    """σ = 1/sqrt(ess·(h + δ)); sampling divides ε by the same sqrt(ess·(h + δ))."""
    with torch.no_grad():
        return (hess + weight_decay).mul_(ess).sqrt_().reciprocal_()


def unwrap_ivon(optimizer: Any) -> Optional[IVON]:
    """The :class:`IVON` inside ``optimizer``, following ``.optimizer`` attributes (e.g. accelerate's
    ``AcceleratedOptimizer``); None if there is none."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        if isinstance(optimizer, IVON):
            return optimizer
        seen.add(id(optimizer))
        optimizer = getattr(optimizer, "optimizer", None)
    return None
