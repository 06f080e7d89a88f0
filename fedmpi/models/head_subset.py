"""Pruned heads taken out of a client's forward and backward (``strategy.pruned_heads=removed``).

Inside ``heads_removed(model, head_map, kept)`` every attention module computes only its
kept heads: each q/k/v projection (base weight, bias and LoRA B) is swapped for a view that
produces only the kept heads' output rows, the module's head count is set to the kept
count, T5's shared position bias is sliced to the kept heads (by the confidence attention
function, which reads ``KEPT_HEADS_ATTR``), and the output projection reads only the kept
heads' input columns. This is what the paper's OPs accounting counts. The swapped modules
index the original parameters, so gradients land in the full-shape ``.grad`` with exact
zeros in the pruned heads' rows; on exit the original modules and head counts return, so
the global model keeps all heads.

A module with no kept head still computes its first head, whose output the output
projection then ignores (a zero-width input): its gradient is exactly zero as well. All
the models' attention code reshapes q/k/v with ``-1`` heads, which makes this work for
BERT, DistilBERT, RoBERTa, T5, BART and GPT-2; an architecture without an output
projection entry in ``arch.py`` is refused with its name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers.pytorch_utils import Conv1D

from fedmpi.models.arch import FUSED_QKV_PROJECTIONS, NUM_HEADS_ATTRS, QKV_PROJECTIONS, arch_spec
from fedmpi.models.heads import HeadMap
from fedmpi.models.importance import CONFIDENCE_ATTENTION, KEPT_HEADS_ATTR

SPLIT_SIZE_ATTR = "split_size"  # GPT-2 splits its fused c_attn output by this width


def _weight_rows(layer: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out_rows, in) weight and bias of a Linear or Conv1D, restricted to output ``rows``."""
    if isinstance(layer, Conv1D):  # weight stored (in, out)
        weight = layer.weight.index_select(1, rows).t()
    else:
        weight = layer.weight.index_select(0, rows)
    bias = None if layer.bias is None else layer.bias.index_select(0, rows)
    return weight, bias


class KeptRows(nn.Module):
    """A q/k/v projection (plain, or peft LoRA around it) that outputs only ``rows``."""

    def __init__(self, layer: nn.Module, rows: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("rows", rows, persistent=False)

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        layer = self.layer
        base = getattr(layer, "base_layer", layer)
        weight, bias = _weight_rows(base, self.rows)
        out = F.linear(x, weight, bias)
        if base is layer or getattr(layer, "disable_adapters", False):
            return out
        for adapter in layer.active_adapters:
            if adapter not in layer.lora_A:
                continue
            if adapter in getattr(layer, "lora_variant", {}):
                raise ValueError(f"strategy.pruned_heads=removed supports plain LoRA, not the {adapter!r} variant")
            lora_a, lora_b = layer.lora_A[adapter], layer.lora_B[adapter]
            hidden = lora_a(layer.lora_dropout[adapter](x))
            out = out + F.linear(hidden, lora_b.weight.index_select(0, self.rows)) * layer.scaling[adapter]
        return out


class KeptColumns(nn.Module):
    """An output projection that reads only input ``columns`` (the kept heads' outputs)."""

    def __init__(self, layer: nn.Module, columns: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("columns", columns, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.layer, Conv1D):
            weight = self.layer.weight.index_select(0, self.columns).t()
        else:
            weight = self.layer.weight.index_select(1, self.columns)
        width = self.columns.numel()
        return F.linear(x[..., :width], weight, self.layer.bias)


def _resolve(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, leaf = path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), leaf


def _output_projection_path(attention_path: str, levels_up: int, rel: str) -> str:
    parts = attention_path.split(".")
    base = parts[: len(parts) - levels_up]
    return ".".join([*base, rel])


def check_supported(model: nn.Module) -> None:
    """Raise, naming the architecture, if ``heads_removed`` cannot handle ``model``."""
    model_type = getattr(model.config, "model_type", None)
    spec = arch_spec(model_type)
    if spec is None or not spec.output_projection[1]:
        raise ValueError(
            f"strategy.pruned_heads=removed does not support model type {model_type!r}: fedmpi/models/arch.py has "
            "no output projection for it; use strategy.pruned_heads=frozen"
        )
    impl = getattr(model.config, "_attn_implementation", None)
    if getattr(model.config, "model_type", None) == "t5" and impl != CONFIDENCE_ATTENTION:
        raise ValueError(
            f"strategy.pruned_heads=removed on T5 needs the {CONFIDENCE_ATTENTION!r} attention (it slices T5's "
            f"shared position bias to the kept heads); the model uses {impl!r}"
        )


@contextmanager
def heads_removed(model: nn.Module, head_map: HeadMap, kept: np.ndarray) -> Iterator[None]:
    """Within the block, ``model`` computes only the heads with ``kept[h]`` (global head ids)."""
    check_supported(model)
    levels_up, rel = arch_spec(model.config.model_type).output_projection
    kept = np.asarray(kept, dtype=bool)
    if kept.shape != (head_map.num_heads_total,):
        raise ValueError(f"kept heads have shape {kept.shape}, expected ({head_map.num_heads_total},)")
    offsets = head_map.head_offsets
    swaps: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, attribute, original module)
    attrs: list[tuple[nn.Module, str, object]] = []  # (module, attribute, original value)
    device = next(model.parameters()).device
    try:
        for i, spec in enumerate(head_map.modules):
            local = np.flatnonzero(kept[offsets[i] : offsets[i + 1]])
            computed = local if local.size else np.array([0])  # see the module docstring
            dh = spec.head_dim
            head_rows = (computed[:, None] * dh + np.arange(dh)[None, :]).reshape(-1)
            attention = model.get_submodule(spec.name)
            width = spec.num_heads * dh
            for leaf, child in list(attention.named_children()):
                if leaf in QKV_PROJECTIONS:
                    rows = head_rows
                elif leaf in FUSED_QKV_PROJECTIONS:
                    rows = np.concatenate([head_rows + seg * width for seg in range(3)])
                else:
                    continue
                swaps.append((attention, leaf, child))
                setattr(attention, leaf, KeptRows(child, torch.from_numpy(rows).to(device)))
            out_parent, out_leaf = _resolve(model, _output_projection_path(spec.name, levels_up, rel))
            out_layer = getattr(out_parent, out_leaf)
            columns = head_rows if local.size else np.zeros(0, dtype=np.int64)
            swaps.append((out_parent, out_leaf, out_layer))
            setattr(out_parent, out_leaf, KeptColumns(out_layer, torch.from_numpy(columns).to(device)))
            for name in NUM_HEADS_ATTRS:
                if isinstance(getattr(attention, name, None), int):
                    attrs.append((attention, name, getattr(attention, name)))
                    setattr(attention, name, int(computed.size))
            if isinstance(getattr(attention, SPLIT_SIZE_ATTR, None), int):
                attrs.append((attention, SPLIT_SIZE_ATTR, getattr(attention, SPLIT_SIZE_ATTR)))
                setattr(attention, SPLIT_SIZE_ATTR, int(computed.size) * dh)
            attrs.append((attention, KEPT_HEADS_ATTR, getattr(attention, KEPT_HEADS_ATTR, None)))
            setattr(attention, KEPT_HEADS_ATTR, torch.from_numpy(computed).to(device))
        yield
    finally:
        for parent, leaf, original in reversed(swaps):
            setattr(parent, leaf, original)
        for module, name, value in reversed(attrs):
            setattr(module, name, value)
