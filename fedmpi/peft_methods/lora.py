"""LoRA (peft ``LoraConfig``) on the q, k, v projections, and what each head owns of it.

platform.md section 1: the update of a q/k/v projection is B @ A with B of shape
(d_out, r); head h owns rows [h*dh, (h+1)*dh) of each B of its attention module, so one
importance score covers q, k and v. A (r x d_in) is shared by all heads and the task head
belongs to no head (both -1). GPT-2's fused ``c_attn`` has one B of 3*d rows (q, k, v
segments, as ``split`` cuts the output) and head h owns its block in each segment; peft
keeps B as (d_out, r) under ``fan_in_fan_out`` too, only the frozen Conv1D weight is (in, out).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from peft import LoraConfig
from torch import nn
from transformers import PreTrainedModel

from fedmpi.models.arch import arch_spec
from fedmpi.models.groups import GroupMap
from fedmpi.models.heads import assemble_groups, attention_modules, element_heads, is_conv1d
from fedmpi.models.params import TrainableLayout, is_lora_param
from fedmpi.peft_methods.common import check_trainable, task_type, wrap_peft


_LORA_FACTOR = re.compile(r"\.lora_[ABE]\.")  # A, B, and AdaLoRA's singular values E


@dataclass(frozen=True)
class Lora:
    rank: int = 16
    alpha: float | None = None  # None -> 2 * rank (method-spec defaults)
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None -> the architecture's q, k, v projections

    name = "lora"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"peft.lora.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"peft.lora.dropout must be in [0, 1), got {self.dropout}")

    @property
    def resolved_alpha(self) -> float:
        return float(2 * self.rank if self.alpha is None else self.alpha)

    def wrap(self, backbone: PreTrainedModel, *, kind: str, task_head: list[str] | None, seed: int) -> nn.Module:
        model_type = backbone.config.model_type
        spec = arch_spec(model_type)
        targets = self.target_modules or (spec.qkv_targets if spec else None)
        if not targets:
            raise ValueError(
                f"peft.method=lora has no default targets for model type {model_type!r}; "
                "set peft.lora.target_modules to its q, k, v projections"
            )
        leaf_types = {n.rpartition(".")[2]: m for n, m in backbone.named_modules()}
        # peft matches a target by the end of a module's name; say so in fedmpi's words if none does.
        names = [n for n, _ in backbone.named_modules()]
        if not any(t in leaf_types or any(n.endswith(f".{t}") for n in names) for t in targets):
            linear = sorted({n.rpartition(".")[2] for n, m in backbone.named_modules()
                             if isinstance(m, torch.nn.Linear) or is_conv1d(m)})  # fmt: skip
            raise ValueError(
                f"peft.lora.target_modules={list(targets)}: no module of this {model_type} model has that name; "
                f"its linear layers are named {linear}"
            )
        config = LoraConfig(
            task_type=task_type(kind, backbone),
            r=self.rank,
            lora_alpha=self.resolved_alpha,
            lora_dropout=self.dropout,
            target_modules=list(targets),
            # peft needs fan_in_fan_out for Conv1D (GPT-2 stores weights as (in, out)).
            fan_in_fan_out=any(t in leaf_types and is_conv1d(leaf_types[t]) for t in targets),
            modules_to_save=None if task_head is None else list(task_head),  # peft extends the list it gets
        )
        model = wrap_peft(backbone, config, seed=seed, method=self.name)
        check_trainable(model, method=self.name, kind=kind, task_head=task_head, is_own=is_lora_param)
        return model

    def head_groups(self, model: nn.Module, layout: TrainableLayout) -> GroupMap:
        return lora_head_groups(model, layout)


def lora_head_groups(model: nn.Module, layout: TrainableLayout) -> GroupMap:
    """Rows of each q/k/v LoRA B by head; everything else (A, the task head) is -1."""
    attentions = attention_modules(model)
    owner_of = {proj: i for i, a in enumerate(attentions) for proj in a.qkv}
    owned: dict[int, list[tuple[slice, np.ndarray]]] = {}
    for i, name in enumerate(layout.names):
        if not is_lora_param(name):
            continue  # the task head: no head
        layer = _LORA_FACTOR.split(name)[0]  # the adapted module's path
        if layer not in owner_of:
            raise ValueError(
                f"LoRA on {layer!r} cannot be mapped to attention heads: only the q/k/v projections of an attention "
                "module are supported; an output projection or an MLP has no per-head rows in B"
            )
        if ".lora_B." in name:
            a = attentions[owner_of[layer]]
            owned.setdefault(owner_of[layer], []).append((layout.slice_of(name), element_heads(layout.shapes[i], 0, a.num_heads, a.head_dim)))
    if not owned:
        raise ValueError("the model has no LoRA B on any attention projection; nothing to map to heads")
    return assemble_groups(layout.numel, attentions, owned)
