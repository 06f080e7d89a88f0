"""Whole transformer blocks as the trainable parameters: layer finetuning's method (arXiv 2411.07826).

Every block's weights and the task head train; the embeddings and everything else outside
the blocks stay frozen. Which blocks a client really trains is the strategy's train mask
(``fedmpi.strategies.layer_finetuning``); the frozen ones get ``requires_grad=False`` for
that client, so nothing before its first trained block requires grad.
No attention-head groups: this method is for block groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from fedmpi.models.blocks import train_last_blocks, block_prefixes
from fedmpi.models.groups import GroupMap
from fedmpi.models.params import TrainableLayout


@dataclass(frozen=True)
class FullBlocks:
    name: str = "blocks"

    def wrap(self, backbone: PreTrainedModel, *, kind: str, task_head: list[str] | None, seed: int) -> nn.Module:
        if kind != "classification" or not task_head:
            raise ValueError("layer finetuning of full blocks supports classification models with a known task head")
        torch.manual_seed(seed)  # the task head was initialised when the backbone was built
        train_last_blocks(backbone, len(block_prefixes(backbone)), task_head)
        return backbone

    def head_groups(self, model: nn.Module, layout: TrainableLayout) -> GroupMap:
        return GroupMap.empty(layout.numel)
