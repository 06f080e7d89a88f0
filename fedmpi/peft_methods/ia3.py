"""IA3 (peft ``IA3Config``): learned scaling vectors, and what each head owns of them.

platform.md section 1: a vector scaling the output of a k or v projection (d entries;
3d for GPT-2's fused ``c_attn``) belongs to the heads by blocks: head h owns entries
[h*dh, (h+1)*dh) (of each q, k, v segment). The vector scaling the FFN's input to its
output layer (d_ff entries) belongs to no head, nor does the task head. peft's defaults
for BERT and RoBERTa (``output.dense``) also catch the attention's W_o, whose input is
the concatenation of the heads' outputs: entries [h*dh, (h+1)*dh) of that vector are head
h's, as W_o's columns are under full fine-tuning. Any other vector (one scaling a
projection's input) has no head structure and is always sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from peft import IA3Config
from torch import nn
from transformers import PreTrainedModel

from fedmpi.models.arch import IA3_DEFAULTS, arch_spec
from fedmpi.models.groups import GroupMap
from fedmpi.models.heads import assemble_groups, attention_modules, element_heads, is_conv1d
from fedmpi.models.params import TrainableLayout
from fedmpi.peft_methods.common import check_trainable, task_type, unmappable, wrap_peft

IA3_MARKER = ".ia3_l."


def is_ia3_param(name: str) -> bool:
    return IA3_MARKER in name


@dataclass(frozen=True)
class Ia3:
    target_modules: tuple[str, ...] | None = None  # None: peft's defaults (fedmpi's for DistilBERT)
    feedforward_modules: tuple[str, ...] | None = None

    name = "ia3"

    def wrap(self, backbone: PreTrainedModel, *, kind: str, task_head: list[str] | None, seed: int) -> nn.Module:
        targets, feedforward = self.target_modules, self.feedforward_modules
        model_type = backbone.config.model_type
        if targets is None and model_type in IA3_DEFAULTS:
            targets, default_ff = IA3_DEFAULTS[model_type]
            feedforward = default_ff if feedforward is None else feedforward
        if targets is not None and feedforward is None:
            feedforward = ()  # peft requires feedforward modules to be a subset of the targets
        config = IA3Config(
            task_type=task_type(kind, backbone),
            target_modules=None if targets is None else list(targets),
            feedforward_modules=None if feedforward is None else list(feedforward),
            fan_in_fan_out=_conv1d_targets(backbone, targets),
            modules_to_save=None if task_head is None else list(task_head),
        )
        model = wrap_peft(backbone, config, seed=seed, method=self.name)
        check_trainable(model, method=self.name, kind=kind, task_head=task_head, is_own=is_ia3_param)
        return model

    def head_groups(self, model: nn.Module, layout: TrainableLayout) -> GroupMap:
        attentions = attention_modules(model)
        qkv = {proj: i for i, a in enumerate(attentions) for proj in a.qkv}
        output = {a.output: i for i, a in enumerate(attentions) if a.output}
        owned: dict[int, list[tuple[slice, np.ndarray]]] = {}
        for i, name in enumerate(layout.names):
            if not is_ia3_param(name):
                continue  # the task head
            layer, shape = name.split(IA3_MARKER)[0], layout.shapes[i]
            scales_output = shape[-1] == 1 and shape[0] > 1  # (d_out, 1); an input vector is (1, d_in)
            if scales_output and layer in qkv:
                owner, axis = qkv[layer], 0
            elif not scales_output and layer in output:
                owner, axis = output[layer], 1
            else:
                continue  # the FFN vector (or an input-scaled q/k/v): no head
            a = attentions[owner]
            owned.setdefault(owner, []).append((layout.slice_of(name), element_heads(shape, axis, a.num_heads, a.head_dim)))
        if not owned:
            raise unmappable(self.name, model, "no IA3 vector scales a q/k/v output or a W_o input; no head owns any")
        return assemble_groups(layout.numel, attentions, owned)


def _conv1d_targets(backbone: PreTrainedModel, targets: tuple[str, ...] | None) -> bool:
    """Whether the targets are GPT-2 Conv1D layers (peft needs fan_in_fan_out for their (in, out) weights)."""
    if targets is None:
        spec = arch_spec(backbone.config.model_type)
        return bool(spec and spec.fan_in_fan_out)
    leaves = {n.rpartition(".")[2]: m for n, m in backbone.named_modules()}
    return any(t in leaves and is_conv1d(leaves[t]) for t in targets)
