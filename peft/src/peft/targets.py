"""Which modules of a transformers model get an adapter, by PEFT's default lists and matching rules.

``target_modules`` is either a list of names, matched against a module path ``p`` when ``p == name`` or
``p.endswith("." + name)``, or a string, which must match the whole path as a regular expression. When it is
None the model type's default list is used. Modules listed in ``modules_to_save`` (and everything below them)
are never adapted: they are trained as full copies instead (current PEFT behaviour; PEFT 0.11 adapted them
before copying).
"""
from __future__ import annotations

import regex
from typing import Optional, Union

from torch import nn

# AdaLoRA defaults. DeBERTa-v2/v3's "dense" also matches pooler.dense: 6 matrices per layer + 1.
ADALORA_DEFAULT_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o", "wi", "wo"],
    "mt5": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gpt2": ["c_attn"],
    "bloom": ["query_key_value"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "gpt_neo": ["q_proj", "v_proj"],
    "llama": ["q_proj", "v_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "key", "value", "dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "deberta": ["in_proj"],
    "gpt_bigcode": ["c_attn"],
}

LORA_DEFAULT_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "bloom": ["query_key_value"],
    "opt": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "gpt_neo": ["q_proj", "v_proj"],
    "llama": ["q_proj", "v_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "deberta": ["in_proj"],
    "gpt_bigcode": ["c_attn"],
}


def default_target_modules(model_type: Optional[str], adaptive: bool) -> list[str]:
    """The default list for ``model_type`` (AdaLoRA map if ``adaptive``); ValueError if there is none."""
    table = ADALORA_DEFAULT_TARGETS if adaptive else LORA_DEFAULT_TARGETS
    if model_type not in table:
        raise ValueError(
            f"no default target_modules for model_type {model_type!r}; pass target_modules explicitly "
            f"(known model types: {', '.join(sorted(table))})"
        )
    return list(table[model_type])


# Regexes come from adapter_config.json files that people share (target_modules, rank/alpha pattern keys).
# Python's `re` backtracks exponentially on patterns such as "(.|.)*Z", which would hang a run; the `regex`
# engine is re-compatible, handles most such patterns quickly and, where it cannot, gives up after this long.
REGEX_TIMEOUT_S = 1.0


def bounded_fullmatch(pattern: str, text: str, what: str = "target_modules") -> bool:
    """``re.fullmatch(pattern, text) is not None``, except that an invalid pattern, or one that runs longer than
    ``REGEX_TIMEOUT_S`` on ``text``, raises ValueError naming ``what`` instead of hanging."""
    try:
        return regex.fullmatch(pattern, text, timeout=REGEX_TIMEOUT_S) is not None
    except regex.error as e:
        raise ValueError(f"{what} {pattern!r} is not a valid regular expression ({e})") from None
    except TimeoutError:
        raise ValueError(f"{what} regex {pattern!r} ran over {REGEX_TIMEOUT_S:g} s on {text!r} (catastrophic "
                         "backtracking); use a simpler pattern or a list of names") from None


def matches_target(path: str, target_modules: Union[list[str], str]) -> bool:
    """True if module ``path`` is selected by ``target_modules`` (list: name or ``.name`` suffix; str: fullmatch,
    bounded in time)."""
    if isinstance(target_modules, str):
        return bounded_fullmatch(target_modules, path)
    return any(path == name or path.endswith("." + name) for name in target_modules)


def is_under_modules_to_save(path: str, modules_to_save: Optional[list[str]]) -> bool:
    """True if ``path`` or one of its ancestors is a modules_to_save target (plain suffix match, as in PEFT)."""
    if not modules_to_save:
        return False
    parts = path.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if any(prefix.endswith(name) for name in modules_to_save):
            return True
    return False


def adaptable_module_names(model: nn.Module) -> list[str]:
    """Sorted distinct last names of the model's Linear-like modules: what ``target_modules`` can name."""
    from .lora import is_supported_base_layer

    return sorted({path.rsplit(".", 1)[-1] for path, m in model.named_modules() if is_supported_base_layer(m)})


def find_targets(
    model: nn.Module, target_modules: Union[list[str], str], modules_to_save: Optional[list[str]] = None
) -> list[str]:
    """Paths of the modules to adapt, in ``named_modules()`` order (which fixes the RNG order, as in PEFT).

    Raises ValueError if nothing matches (naming the Linear modules the model has) or if a matched module is
    not a Linear-like layer.
    """
    from .lora import is_supported_base_layer

    targets = []
    for path, module in model.named_modules():
        if not path or not matches_target(path, target_modules):
            continue
        if is_under_modules_to_save(path, modules_to_save):
            continue
        if not is_supported_base_layer(module):
            raise ValueError(
                f"target module {path!r} is a {type(module).__name__}; only torch.nn.Linear and "
                f"transformers Conv1D can be adapted"
            )
        targets.append(path)
    if not targets:
        raise ValueError(
            f"target_modules={target_modules!r} matched no module of {type(model).__name__}; its Linear modules "
            f"are named: {', '.join(adaptable_module_names(model)) or '(none)'}"
        )
    return targets
