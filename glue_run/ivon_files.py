"""IVON's state saved with an adapter: written as ivon_state.pt (Hessian and momentum per parameter name, cut to
the saved adapter's kept triplets), read back from it or from the original code's ivon_hessian*.state files.
"""
from __future__ import annotations

from pathlib import Path

import torch
from peft.rank_pattern import adapter_tensor_module, keep_triplets, masks_by_module

from .errors import UsageError
from .files import load_torch_file


def ivon_state_by_name(run) -> dict[str, dict[str, torch.Tensor]]:
    """IVON's per-parameter hess/momentum (via `param_state`), cut to the saved adapter's kept triplets.

    AdaLoRA/VILoRA adapters are saved with only the kept triplets (A rows, E rows, B columns of the rank
    pattern), so the per-element state is cut the same way (`peft.rank_pattern.keep_triplets`, as the adapter
    file is) and loads straight onto the resized adapter.
    """
    model = run.peft_model
    masks = masks_by_module(model.peft_config["default"].rank_pattern) if run.adaptive else {}
    result = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        st = {k: v.detach().clone().cpu() for k, v in run.ivon.param_state(p).items()}
        module = adapter_tensor_module(name)
        if module in masks:
            st = {k: keep_triplets(name, v, masks[module]) for k, v in st.items()}
        result[name] = st
    return result


# IVON state files beside a saved adapter, in the order they are looked for: ours, then the original code's
# (ivon_hessian_resized.state for AdaLoRA/VILoRA, ivon_hessian.state otherwise).
IVON_STATE_FILES = ("ivon_state.pt", "ivon_hessian_resized.state", "ivon_hessian.state")


def find_ivon_state(folder: Path) -> Path | None:
    """The IVON state file saved with the adapter in `folder`, or None."""
    return next((folder / n for n in IVON_STATE_FILES if (folder / n).is_file()), None)


def read_ivon_state(path: Path) -> dict:
    """A saved IVON state, safely: ours ({ess, weight_decay, params: {name: {hess, momentum}}}) or the original
    code's ({hess: one flat tensor in parameter order, ess, weight_decay, numel})."""
    saved = load_torch_file(path, map_location="cpu")
    ours = isinstance(saved, dict) and isinstance(saved.get("params"), dict)
    fork = isinstance(saved, dict) and isinstance(saved.get("hess"), torch.Tensor) and saved["hess"].dim() == 1
    if not (ours or fork) or not isinstance(saved.get("ess"), (int, float)):
        raise UsageError(f"{path}: not an IVON state file (expected ess and a Hessian per parameter or one flat "
                         "Hessian)")
    return saved


def load_ivon_state(run, path: Path) -> None:
    """Continue IVON from a saved adapter: copy its Hessian into the matching params (the fork restored hess
    only; momentum and the step counter start afresh, as a new run's would). The original code's flat Hessian
    is laid out in parameter order, as IVON's own state is."""
    saved = read_ivon_state(path)
    params = [(n, p) for n, p in run.peft_model.named_parameters() if p.requires_grad]
    if "params" in saved:
        for name, p in params:
            hess = saved["params"].get(name, {}).get("hess")
            if not isinstance(hess, torch.Tensor) or hess.shape != p.shape:
                raise UsageError(f"{path}: no IVON Hessian of shape {tuple(p.shape)} for {name}; was it saved with "
                                 "this adapter?")
            run.ivon.param_state(p)["hess"].copy_(hess)
    else:
        flat, total = saved["hess"], sum(p.numel() for _, p in params)
        if flat.numel() != total:
            raise UsageError(f"{path}: its Hessian has {flat.numel()} elements, the adapter's trainable parameters "
                             f"{total}; was it saved with this adapter?")
        for (_, p), hess in zip(params, flat.split([p.numel() for _, p in params])):
            run.ivon.param_state(p)["hess"].copy_(hess.view_as(p))
    ess = run.ivon.param_groups[0].get("ess")
    if ess is not None and saved.get("ess") != ess:
        run.accelerator.print(f"note: {path.name} was trained with ess={saved.get('ess')}, this run uses ess={ess}")
