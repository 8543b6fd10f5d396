# SPDX-License-Identifier: GPL-3.0-or-later
"""The IVON optimizer (Improved Variational Online Newton), numerically identical to ivon-opt 0.1.3,
with a per-parameter posterior API."""
from .optimizer import IVON, check_hyperparameters, hessian_estimate, hessian_update, momentum_update, param_update, unwrap_ivon

__all__ = ["IVON", "check_hyperparameters", "unwrap_ivon", "momentum_update", "hessian_estimate", "hessian_update", "param_update"]
__version__ = "0.1.3.post1"
