"""What the peft-backed methods share: the task type, the seeded wrap, the trainability check.

Every method leaves exactly its own parameters and the task head trainable; this module
checks that after peft has wrapped the backbone, and words the error every method raises
for a combination it cannot map (method x architecture), naming ``peft.method``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from peft import PeftConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import PreTrainedModel

def task_type(kind: str, backbone: PreTrainedModel) -> TaskType:
    """peft's task type: classification, or generation as seq2seq (T5, BART) or causal LM (GPT-2)."""
    if kind == "classification":
        return TaskType.SEQ_CLS
    if kind != "generation":
        raise ValueError(f"model kind must be classification or generation, got {kind!r}")
    return TaskType.SEQ_2_SEQ_LM if getattr(backbone.config, "is_encoder_decoder", False) else TaskType.CAUSAL_LM


def unmappable(method: str, model: nn.Module, reason: str) -> ValueError:
    """The start-up error for a method x architecture fedmpi cannot run."""
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    return ValueError(f"peft.method={method} cannot be used with model type {model_type!r}: {reason}")


def wrap_peft(backbone: PreTrainedModel, config: PeftConfig, *, seed: int, method: str) -> PeftModel:
    """``get_peft_model`` after ``torch.manual_seed(seed)``; peft's refusals become start-up errors."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        # peft reads a property transformers 5 deprecates; the warning is not actionable here.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            return get_peft_model(backbone, config)
        except (ValueError, NotImplementedError, KeyError, AttributeError) as error:
            reason = (str(error).splitlines() or [type(error).__name__])[0]
            raise unmappable(method, backbone, f"peft refuses it ({reason})") from error


def check_trainable(
    model: nn.Module, *, method: str, kind: str, task_head: list[str] | None, is_own: Callable[[str], bool]
) -> None:
    """Exactly the method's own parameters (``is_own``) and, for classification, the task head train."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    others = [n for n in trainable if not is_own(n)]
    if not any(is_own(n) for n in trainable):
        raise ValueError(f"peft.method={method} matched no module: check its target_modules")
    if kind == "generation" and others:
        raise ValueError(f"a generation model should train only {method}'s parameters, but {others[0]!r} is trainable")
    if kind == "classification":
        if not others:
            raise ValueError("the classification head is not trainable; add it to the architecture table in arch.py")
        if task_head:
            stray = [n for n in others if not any(f".{h}." in f".{n}" for h in task_head)]
            if stray:
                raise ValueError(f"{stray[0]!r} is trainable but is neither {method}'s nor the task head {task_head}")
            for head in task_head:
                if not any(f".{head}." in f".{n}" for n in others):
                    raise ValueError(f"task head module {head!r} was not made trainable")
