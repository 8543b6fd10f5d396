"""Adapter configurations: ``LoraConfig``, ``AdaLoraConfig`` and ``VILoraConfig``, and their JSON form.

A config is a plain dataclass. Its fields are exactly the keys of ``adapter_config.json`` as written by
Hugging Face PEFT 0.11, so files travel both ways. Writing never mutates the live object:
``to_file_dict`` returns a copy with the on-disk conventions applied (``inference_mode`` true, rank-pattern
keys without the adapter name, VILoRA stored as ``"peft_type": "ADALORA"`` plus a ``"criterion"`` key).
"""
from __future__ import annotations

import copy
import enum
import json
import os
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

from .rank_pattern import strip_adapter_name

CONFIG_NAME = "adapter_config.json"


class PeftType(str, enum.Enum):
    """Which adapter method a config describes."""

    LORA = "LORA"
    ADALORA = "ADALORA"
    VILORA = "VILORA"


class TaskType(str, enum.Enum):
    """The task head; it decides which head modules are trained and saved alongside the adapter."""

    SEQ_CLS = "SEQ_CLS"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


# Keys that newer Hugging Face PEFT releases add to adapter_config.json. Reading such a file is fine as long as
# the feature behind a key is switched off; these few are bookkeeping and are dropped whatever their value.
_IGNORED_FOREIGN_KEYS = {"peft_version", "qalora_group_size", "ensure_weight_tying", "runtime_config"}


@dataclass
class PeftConfig:
    """Fields shared by every adapter config.

    ``inference_mode`` freezes the adapter (no rank allocator, no gradients). ``base_model_name_or_path`` is
    filled from the model by ``get_peft_model``.
    """

    peft_type: Optional[Union[str, PeftType]] = None
    task_type: Optional[Union[str, TaskType]] = None
    inference_mode: bool = False
    base_model_name_or_path: Optional[str] = None
    revision: Optional[str] = None
    auto_mapping: Optional[dict] = None

    # ------------------------------------------------------------------ dict / JSON
    def to_dict(self) -> dict[str, Any]:
        """All fields as a deep-copied dict (enums as their string values); the live config is untouched."""
        out = {}
        for f in fields(self):
            value = copy.deepcopy(getattr(self, f.name))
            if isinstance(value, enum.Enum):
                value = value.value
            if isinstance(value, (set, frozenset)):
                value = sorted(value)
            out[f.name] = value
        return out

    def to_file_dict(self, adapter_name: str = "default") -> dict[str, Any]:
        """The dict written to ``adapter_config.json``: ``inference_mode`` is always true, as in PEFT."""
        out = self.to_dict()
        out["inference_mode"] = True
        return out

    def save_pretrained(self, save_directory: str, adapter_name: str = "default") -> None:
        """Write ``adapter_config.json`` (indent 2, sorted keys) into ``save_directory``."""
        os.makedirs(save_directory, exist_ok=True)
        text = json.dumps(self.to_file_dict(adapter_name), indent=2, sort_keys=True)
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as fh:
            fh.write(text)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PeftConfig":
        """Build the config class named by ``data["peft_type"]`` (``cls`` if the key is absent).

        ``"ADALORA"`` together with a ``"criterion"`` key, and ``"VILORA"`` (the paper's fork), both give a
        ``VILoraConfig``. Keys written by newer PEFT releases are dropped when their feature is off; an
        enabled feature this package lacks raises ValueError rather than loading a different model.
        """
        data = dict(data)
        peft_type = data.get("peft_type")
        if peft_type is None:
            if cls is PeftConfig:
                raise ValueError("adapter config has no 'peft_type'; expected one of LORA, ADALORA, VILORA")
            config_cls = cls
        else:
            peft_type = str(peft_type.value if isinstance(peft_type, enum.Enum) else peft_type).upper()
            if peft_type == "ADALORA" and "criterion" in data:
                peft_type = "VILORA"
            if peft_type not in _CONFIG_CLASSES:
                raise ValueError(f"unsupported peft_type {peft_type!r}; this package knows LORA, ADALORA, VILORA")
            config_cls = _CONFIG_CLASSES[peft_type]
        known = {f.name for f in fields(config_cls)}
        kwargs = {}
        for key, value in data.items():
            if key in known:
                if key != "peft_type":
                    kwargs[key] = value
            elif key in _IGNORED_FOREIGN_KEYS or value in (None, False, {}, []):
                continue
            else:
                raise ValueError(
                    f"adapter config sets {key}={value!r}, a Hugging Face PEFT feature this package does not "
                    f"implement; remove the key or set it to null/false"
                )
        return config_cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str) -> "PeftConfig":
        """Read one ``adapter_config.json`` file."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    @classmethod
    def from_pretrained(cls, pretrained_dir: str, subfolder: Optional[str] = None, **overrides: Any) -> "PeftConfig":
        """Load ``<dir>/adapter_config.json``, picking the class from its ``peft_type``; ``overrides`` set fields."""
        directory = os.path.join(pretrained_dir, subfolder) if subfolder else pretrained_dir
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"no {CONFIG_NAME} in {directory!r}")
        config = cls.from_json_file(path)
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise ValueError(f"{type(config).__name__} has no field {key!r}")
            setattr(config, key, value)
        return config

    @property
    def is_adaptive(self) -> bool:
        """True for AdaLoRA and VILoRA (SVD-form adapters with a rank allocator)."""
        return False

    @property
    def method(self) -> str:
        """The adapter method in lower case: ``"lora"``, ``"adalora"`` or ``"vilora"``."""
        return PeftType(getattr(self.peft_type, "value", self.peft_type)).value.lower()

    @property
    def importance_criterion(self) -> Optional[str]:
        """The score that ranks triplets: ``"sensitivity"`` (AdaLoRA), a posterior criterion of
        ``peft.importance`` (VILoRA), or None for adapters without rank allocation (LoRA)."""
        return None


@dataclass
class LoraConfig(PeftConfig):
    """Standard LoRA: ``W x + (alpha / r) * B A x`` with ``A: [r, in]``, ``B: [out, r]`` (``alpha/sqrt(r)``
    with ``use_rslora``).

    ``target_modules``: list of module-name suffixes (``"query"`` matches ``"....query"``) or a regex that must
    match the whole module path; None uses the model type's default (see ``peft.targets``).
    ``init_lora_weights``: True (A kaiming-uniform, B zero, so the adapter starts as the identity) or
    False (B left random too). ``rank_pattern`` / ``alpha_pattern`` override ``r`` / ``lora_alpha`` for modules
    whose path ends with (regex) a key. ``bias`` must be ``"none"``; the other PEFT options (DoRA, LoftQ,
    layer replication, Megatron, layers_to_transform) are present so files round-trip, and are rejected if set.
    """

    r: int = 8
    target_modules: Optional[Union[list[str], str]] = None
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: str = "none"
    use_rslora: bool = False
    modules_to_save: Optional[list[str]] = None
    init_lora_weights: Union[bool, str] = True
    layers_to_transform: Optional[Union[list[int], int]] = None
    layers_pattern: Optional[Union[list[str], str]] = None
    rank_pattern: Optional[dict] = field(default_factory=dict)
    alpha_pattern: Optional[dict] = field(default_factory=dict)
    megatron_config: Optional[dict] = None
    megatron_core: Optional[str] = "megatron.core"
    loftq_config: Union[dict, Any] = field(default_factory=dict)
    use_dora: bool = False
    layer_replication: Optional[list] = None

    def __post_init__(self) -> None:
        self.peft_type = PeftType.LORA
        self.validate()

    def validate(self) -> None:
        """Raise ValueError for settings that are invalid or not implemented here."""
        self._validate_common()
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive integer, got {self.r!r}")
        if self.init_lora_weights not in (True, False):
            raise ValueError(f"LoraConfig.init_lora_weights must be True or False, got {self.init_lora_weights!r}")

    def _validate_common(self) -> None:
        if self.task_type is not None:
            try:
                self.task_type = TaskType(str(getattr(self.task_type, "value", self.task_type)))
            except ValueError:
                valid = ", ".join(t.value for t in TaskType)
                raise ValueError(f"unknown task_type {self.task_type!r}; valid: {valid}") from None
        if self.bias != "none":
            raise ValueError(f"bias={self.bias!r} is not supported; only bias='none' is implemented")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or \
                not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be a number > 0, got {self.lora_alpha!r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout!r}")
        unsupported = {
            "use_dora": self.use_dora,
            "loftq_config": self.loftq_config,
            "layer_replication": self.layer_replication,
            "megatron_config": self.megatron_config,
            "layers_to_transform": self.layers_to_transform,
        }
        for key, value in unsupported.items():
            if value not in (None, False, {}, []):
                raise ValueError(f"{key}={value!r} is not supported by this package; leave it unset")
        if isinstance(self.target_modules, (set, frozenset, tuple)):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.modules_to_save, (set, frozenset, tuple)):
            self.modules_to_save = sorted(self.modules_to_save)


@dataclass
class AdaLoraConfig(LoraConfig):
    """AdaLoRA: ``W x + B (A ⊙ E) x * lora_alpha / (init_r + 1e-5)`` with triplets pruned to a budget.

    Shapes per adapted ``nn.Linear(in, out)``: ``A: [init_r, in]``, ``E: [init_r, 1]``, ``B: [out, init_r]``.
    The total rank budget falls from ``init_r * n_modules`` to ``target_r * n_modules`` on a cubic schedule
    between steps ``tinit`` and ``total_step - tfinal`` (masking every ``deltaT`` steps); ``beta1``/``beta2`` are
    the sensitivity EMAs; ``orth_reg_weight`` multiplies the orthogonality penalty added to the loss.
    ``r`` is unused (kept so files match PEFT).

    ``init_lora_weights``: True reproduces PEFT 0.11 (E, A, B ~ N(0, 0.02), so the adapter is *not* the
    identity at step 0); ``"zero_e"`` sets E = 0 (current PEFT; the adapter starts as the identity) and draws
    A, B ~ N(0, 0.02) from the same random stream; False keeps standard-normal placeholders.
    ``rank_pattern`` (set by the allocator): ``{"<module>.lora_E[.<adapter>]": [bool] * init_r}``, True = kept.
    """

    target_r: int = 8
    init_r: int = 12
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: Optional[int] = None
    rank_pattern: Optional[dict] = None

    def __post_init__(self) -> None:
        self.peft_type = PeftType.ADALORA
        if self.r != 8:
            warnings.warn("AdaLoraConfig.r is ignored; the adapter rank is init_r", stacklevel=3)
        self.validate()

    @property
    def is_adaptive(self) -> bool:
        """AdaLoRA-family configs are adaptive."""
        return True

    @property
    def importance_criterion(self) -> Optional[str]:
        """AdaLoRA ranks triplets by ``"sensitivity"``; VILoRA by its posterior ``criterion``."""
        return getattr(self, "criterion", None) or "sensitivity"

    def validate(self) -> None:
        """Checks that need no schedule length: ranks, orthogonal weight, EMA betas, init mode."""
        self._validate_common()
        for name in ("init_r", "target_r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.target_r > self.init_r:
            raise ValueError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")
        if self.orth_reg_weight < 0:
            raise ValueError(f"orth_reg_weight must be >= 0, got {self.orth_reg_weight!r}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
        if self.init_lora_weights not in (True, False, "zero_e"):
            raise ValueError(f"init_lora_weights must be True, False or 'zero_e', got {self.init_lora_weights!r}")
        if self.total_step is not None and (not isinstance(self.total_step, int) or self.total_step <= 0):
            raise ValueError(f"total_step must be a positive integer or None, got {self.total_step!r}")

    def validate_schedule(self) -> None:
        """Checks that need ``total_step`` (no budgeting phase, missing total_step, ...), with the numbers in
        the message; ``RankAllocator.update_and_allocate`` applies the same rule at its first call."""
        from .rank_allocator import validate_schedule

        validate_schedule(self, self.init_r, self.target_r)

    def to_file_dict(self, adapter_name: str = "default") -> dict[str, Any]:
        """As in PEFT: rank-pattern keys lose ``.<adapter>`` and masks become plain bool lists."""
        out = super().to_file_dict(adapter_name)
        if self.rank_pattern is not None:
            out["rank_pattern"] = {
                strip_adapter_name(key, adapter_name): [bool(b) for b in _as_list(mask)]
                for key, mask in self.rank_pattern.items()
            }
        if self.total_step is None:
            warnings.warn(
                "saving an AdaLoRA config without total_step: Hugging Face PEFT >= 0.14 refuses to load it",
                stacklevel=3,
            )
        return out


@dataclass
class VILoraConfig(AdaLoraConfig):
    """AdaLoRA whose triplet importance comes from the IVON posterior (paper, Sec. 3).

    ``criterion`` names a score from ``peft.importance`` (default ``"SNR_mean_abs"``: E|θ| / Std|θ| for
    θ ~ N(μ, σ²)). Saved as ``"peft_type": "ADALORA"`` plus ``"criterion"`` so Hugging Face PEFT loads it
    as plain AdaLoRA; reading such a file here gives a VILoraConfig again.
    """

    criterion: str = "SNR_mean_abs"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.VILORA

    def validate(self) -> None:
        """AdaLoRA checks plus a known ``criterion`` (ValueError listing the valid names)."""
        super().validate()
        from .importance import get_criterion  # the registry lives with the allocator

        get_criterion(self.criterion)

    def to_file_dict(self, adapter_name: str = "default") -> dict[str, Any]:
        """AdaLoRA's file dict with ``peft_type`` "ADALORA" (so Hugging Face PEFT loads it) and ``criterion``."""
        out = super().to_file_dict(adapter_name)
        out["peft_type"] = PeftType.ADALORA.value
        return out


_CONFIG_CLASSES: dict[str, type] = {"LORA": LoraConfig, "ADALORA": AdaLoraConfig, "VILORA": VILoraConfig}


def _as_list(mask: Any) -> list:
    return mask.tolist() if hasattr(mask, "tolist") else list(mask)
