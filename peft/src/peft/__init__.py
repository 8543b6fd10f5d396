"""LoRA, AdaLoRA and VILoRA adapters, API- and file-compatible with Hugging Face PEFT for what they cover.

VILoRA is AdaLoRA whose rank allocation scores triplets by the IVON posterior ("A Bayesian Interpretation of
Adaptive Low-Rank Adaptation", Chen & Garner, 2024).
"""
from .adalora import AdaLoraModel, SVDLinear, VILoraModel
from .config import AdaLoraConfig, LoraConfig, PeftConfig, PeftType, TaskType, VILoraConfig
from .lora import LoraLinear
from .mapping import get_peft_model
from .peft_model import (PeftMixedModel, PeftModel, PeftModelForSequenceClassification,
                         PeftModelForTokenClassification)
from .save_load import get_peft_model_state_dict, set_peft_model_state_dict
from .tuner import LoraModel

__version__ = "0.11.1+vilora"

__all__ = [
    "AdaLoraConfig", "AdaLoraModel", "LoraConfig", "LoraLinear", "LoraModel", "PeftConfig", "PeftMixedModel", "PeftModel",
    "PeftModelForSequenceClassification", "PeftModelForTokenClassification", "PeftType", "SVDLinear", "TaskType",
    "VILoraConfig", "VILoraModel", "get_peft_model", "get_peft_model_state_dict", "set_peft_model_state_dict",
]
