"""Transformer blocks of a model: where they are, what they weigh, and which flat elements each owns.

A model's blocks are the items of its outermost ``nn.ModuleList``s whose items all share one
class (BERT's ``encoder.layer``, GPT-2's ``h``, T5's and BART's encoder then decoder stacks),
taken in module order, which is forward order. Layer finetuning (arXiv 2411.07826) trains
the last n of them; this module turns that structure into the numbers its budgets need
(``fedmpi.budgets.ModelSizes``) and into a ``GroupMap`` with one group per block.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from fedmpi.accounting import attention_dims
from fedmpi.budgets import ModelSizes
from fedmpi.models.groups import GroupFamily, GroupMap
from fedmpi.models.params import TrainableLayout

BLOCKS_FAMILY = "blocks"


def block_prefixes(model: nn.Module) -> list[str]:
    """Module paths of every transformer block (``"...encoder.layer.0"``), in forward order."""
    stacks: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if any(name.startswith(f"{outer}.") for outer in stacks):
            continue  # a list inside a block (e.g. T5's per-block sublayers) is not a stack of blocks
        stacks.append(name)
    if not stacks:
        raise ValueError(f"{type(model).__name__}: found no stack of transformer blocks (a ModuleList of one class)")
    root = dict(model.named_modules())
    return [f"{stack}.{i}" for stack in stacks for i in range(len(root[stack]))]


def _block_of(name: str, prefixes: list[str]) -> int:
    for i, prefix in enumerate(prefixes):
        if name.startswith(f"{prefix}."):
            return i
    return -1


def model_sizes(model: nn.Module, task_head_names: list[str], hf_config) -> ModelSizes:
    """``ModelSizes`` of ``model``: every parameter is a block's, the task head's (any name containing
    ``.<head>.``) or other (never trained). A block's trainable weights are those with
    ``requires_grad`` (all of a bare backbone's; only the adapters of a LoRA-wrapped one)."""
    prefixes = block_prefixes(model)
    block_params = [0] * len(prefixes)
    block_trainable = [0] * len(prefixes)
    head = other = 0
    for name, p in model.named_parameters():
        i = _block_of(name, prefixes)
        if i >= 0:
            block_params[i] += p.numel()
            block_trainable[i] += p.numel() if p.requires_grad else 0
        elif p.requires_grad and any(f".{h}." in f".{name}" for h in task_head_names):
            head += p.numel()  # peft's frozen copy of the head (original_module) counts as other
        else:
            other += p.numel()
    dims = attention_dims(hf_config)
    return ModelSizes(
        block_params=tuple(block_params),
        head_params=head,
        other_params=other,
        d_model=dims.d_model,
        d_ff=dims.d_ff or 4 * dims.d_model,
        num_heads=dims.num_heads,
        block_trainable=None if block_trainable == block_params else tuple(block_trainable),
    )


def block_groups(model: nn.Module, layout: TrainableLayout) -> GroupMap:
    """One group per block owning its trainable elements; everything else (the task head) is -1."""
    prefixes = block_prefixes(model)
    sizes = np.diff(layout.offsets)
    per_param = np.array([_block_of(n, prefixes) for n in layout.names], dtype=np.int32)
    family = GroupFamily(name=BLOCKS_FAMILY, kind="block", num_groups=len(prefixes))
    return GroupMap(families=(family,), group_index=np.repeat(per_param, sizes))


def train_last_blocks(model: nn.Module, num_blocks: int, task_head_names: list[str]) -> None:
    """``requires_grad`` True exactly for the last ``num_blocks`` blocks and the task head.

    Everything before the first trained block is then frozen, embeddings included, so no
    tensor there requires grad: autograd records nothing, keeps no activations and runs no
    backward for the prefix (``tests/test_measure.py`` measures it).
    """
    prefixes = block_prefixes(model)
    if not 0 <= num_blocks <= len(prefixes):
        raise ValueError(f"num_blocks must lie in [0, {len(prefixes)}], got {num_blocks}")
    trained = prefixes[len(prefixes) - num_blocks :]
    for name, p in model.named_parameters():
        in_trained = any(name.startswith(f"{t}.") for t in trained)
        p.requires_grad_(in_trained or any(f".{h}." in f".{name}" for h in task_head_names))
