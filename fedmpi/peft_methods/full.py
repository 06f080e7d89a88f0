"""Full fine-tuning: every weight trains (but the modules named in ``peft.full.frozen_modules``).

platform.md section 1: head h owns rows [h*dh, (h+1)*dh) of W_q, W_k, W_v (and of their
biases) and columns [h*dh, (h+1)*dh) of W_o, in its attention module; embeddings, FFN,
norms, W_o's bias and the task head belong to no head. GPT-2's Conv1D stores weights as
(in, out): there the head blocks are columns of the fused ``c_attn`` (in each of the q, k,
v segments) and rows of ``c_proj``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from fedmpi.models.groups import GroupMap
from fedmpi.models.heads import assemble_groups, attention_modules, element_heads, is_conv1d
from fedmpi.models.params import TrainableLayout
from fedmpi.peft_methods.common import unmappable


def _under(name: str, module: str) -> bool:
    return f".{module}." in f".{name}"


@dataclass(frozen=True)
class Full:
    frozen_modules: tuple[str, ...] = ()  # module names (dotted path parts) whose parameters stay frozen

    name = "full"

    def wrap(self, backbone: PreTrainedModel, *, kind: str, task_head: list[str] | None, seed: int) -> nn.Module:
        torch.manual_seed(seed)  # nothing is drawn; kept so every method seeds the same way
        for name, param in backbone.named_parameters():
            param.requires_grad_(not any(_under(name, m) for m in self.frozen_modules))
        trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(f"peft.full.frozen_modules={list(self.frozen_modules)} freezes every parameter")
        frozen_heads = [h for h in task_head or () if not any(_under(n, h) for n in trainable)]
        if kind == "classification" and frozen_heads:
            raise ValueError(f"task head module {frozen_heads[0]!r} is frozen or missing; it must train")
        return backbone

    def head_groups(self, model: nn.Module, layout: TrainableLayout) -> GroupMap:
        modules = dict(model.named_modules())
        attentions = attention_modules(model)
        # projection path -> (attention index, head axis of its weight, whether its bias is head-owned)
        axes: dict[str, tuple[int, int, bool]] = {}
        for k, a in enumerate(attentions):
            if a.output is None:
                raise unmappable(self.name, model, f"no output projection W_o found for {a.path}")
            for proj in a.qkv:
                axes[proj] = (k, 1 if is_conv1d(modules[proj]) else 0, True)  # q, k, v outputs
            axes[a.output] = (k, 0 if is_conv1d(modules[a.output]) else 1, False)  # W_o's input
        owned: dict[int, list[tuple[slice, np.ndarray]]] = {}
        for i, name in enumerate(layout.names):
            module, _, leaf = name.rpartition(".")
            if module not in axes:
                continue  # embeddings, FFN, norms, the task head: no head
            k, axis, bias_owned = axes[module]
            a = attentions[k]
            if leaf == "bias":
                if not bias_owned:
                    continue  # W_o's bias is added after the heads are summed
                axis = 0
            flat = slice(int(layout.offsets[i]), int(layout.offsets[i + 1]))
            owned.setdefault(k, []).append((flat, element_heads(layout.shapes[i], axis, a.num_heads, a.head_dim)))
        return assemble_groups(layout.numel, attentions, owned)
