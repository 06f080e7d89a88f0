"""Which elements of the flat trainable vector belong to which attention head.

method-spec "What a head owns": for a q/k/v projection, LoRA's update is B @ A with B of
shape (d_out, r); head h owns rows [h*dh, (h+1)*dh) of B, in each of the q, k and v B's of
its attention module, so one importance score covers all three. A (r x d_in) is shared by
all heads and the task head belongs to no head; both are index -1. GPT-2's fused
``c_attn`` has one B of 3*d rows (q, k, v segments, in that order, as ``split`` cuts the
output) and head h owns its block in each segment.

Head counts and widths come from the attention modules themselves, never from a table of
model sizes; anything that cannot be split by heads (LoRA on an output projection, an
MLP, an unknown attention module) is an error naming the module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedmpi.models.arch import (
    CROSS_ATTENTION_MODULES,
    FUSED_QKV_PROJECTIONS,
    HEAD_DIM_ATTRS,
    NUM_HEADS_ATTRS,
    QKV_PROJECTIONS,
)
from fedmpi.models.params import TrainableLayout

HEAD_KINDS = ("self", "encoder_self", "decoder_self", "cross")


@dataclass(frozen=True)
class AttentionHeads:
    """One attention module whose projections carry LoRA."""

    name: str  # module path in the (peft-wrapped) model
    kind: str  # one of HEAD_KINDS
    num_heads: int
    head_dim: int


@dataclass(frozen=True, eq=False)
class HeadMap:
    """Global head ids over the flat vector: module m's head h is ``head_offsets[m] + h``."""

    modules: tuple[AttentionHeads, ...]
    head_index: np.ndarray  # int32 per flat element: global head id, or -1 for non-head elements

    @property
    def num_heads_total(self) -> int:
        return sum(m.num_heads for m in self.modules)

    @property
    def head_offsets(self) -> np.ndarray:
        """int64, len(modules) + 1: first global head id of each module."""
        return np.concatenate([[0], np.cumsum([m.num_heads for m in self.modules])]).astype(np.int64)

    def element_mask(self, head_mask: np.ndarray) -> np.ndarray:
        """Bool per element: True for non-head elements and for elements of kept heads."""
        head_mask = np.asarray(head_mask, dtype=bool)
        if head_mask.shape != (self.num_heads_total,):
            raise ValueError(f"head_mask has shape {head_mask.shape}, expected ({self.num_heads_total},)")
        # Index -1 (non-head elements) picks the appended True.
        return np.append(head_mask, True)[self.head_index]


def _int_attr(module: torch.nn.Module, names: tuple[str, ...]) -> int | None:
    return next((v for v in (getattr(module, n, None) for n in names) if isinstance(v, int)), None)


def _head_geometry(attention: torch.nn.Module, name: str) -> tuple[int, int]:
    num_heads, head_dim = _int_attr(attention, NUM_HEADS_ATTRS), _int_attr(attention, HEAD_DIM_ATTRS)
    if num_heads is None or head_dim is None:
        raise ValueError(
            f"cannot split LoRA on {name!r} into heads: its parent {type(attention).__name__} exposes no head "
            f"count/width (looked for {NUM_HEADS_ATTRS} and {HEAD_DIM_ATTRS}); unsupported architecture"
        )
    return num_heads, head_dim


def _attention_kind(model: torch.nn.Module, path: str) -> str:
    parts = path.split(".")
    is_cross = parts[-1] in CROSS_ATTENTION_MODULES
    if not getattr(model.config, "is_encoder_decoder", False):
        if is_cross:
            raise ValueError(f"cross attention {path!r} in a model that is not encoder-decoder is not supported")
        return "self"
    if "encoder" in parts:
        return "encoder_self"
    if "decoder" in parts:
        return "cross" if is_cross else "decoder_self"
    raise ValueError(f"cannot tell whether attention module {path!r} is in the encoder or the decoder")


def build_head_map(model: torch.nn.Module, layout: TrainableLayout) -> HeadMap:
    """Map each element of ``layout``'s flat vector to its global attention head (or -1)."""
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    # attention path -> list of (layout index, number of q/k/v segments in that B)
    owned: dict[str, list[tuple[int, int]]] = {}
    for i, name in enumerate(layout.names):
        if ".lora_A." not in name and ".lora_B." not in name:
            continue  # the task head: no head
        layer = name.split(".lora_A.")[0].split(".lora_B.")[0]
        attention_path, _, leaf = layer.rpartition(".")
        if leaf in QKV_PROJECTIONS:
            segments = 1
        elif leaf in FUSED_QKV_PROJECTIONS:
            segments = 3
        else:
            raise ValueError(
                f"LoRA on {layer!r} cannot be mapped to attention heads: only q/k/v projections are supported "
                f"({sorted(QKV_PROJECTIONS | FUSED_QKV_PROJECTIONS)}); an output projection or an MLP has no "
                "per-head rows in B"
            )
        if ".lora_B." in name:
            owned.setdefault(attention_path, []).append((i, segments))

    head_index = np.full(layout.numel, -1, dtype=np.int32)
    specs: list[AttentionHeads] = []
    first_head = 0
    for path in sorted(owned, key=order.__getitem__):
        num_heads, head_dim = _head_geometry(modules[path], path)
        specs.append(AttentionHeads(path, _attention_kind(model, path), num_heads, head_dim))
        width = num_heads * head_dim
        for i, segments in owned[path]:
            d_out = layout.shapes[i][0]
            if d_out != segments * width:
                raise ValueError(
                    f"{layout.names[i]} has {d_out} output rows, but {path} has {num_heads} heads x {head_dim} "
                    f"(x{segments} segments) = {segments * width}; cannot split it by heads"
                )
            row_len = int(np.prod(layout.shapes[i][1:], dtype=np.int64))
            # Row j belongs to head (j mod width) // head_dim in every q/k/v segment.
            row_head = first_head + (np.arange(d_out) % width) // head_dim
            head_index[layout.offsets[i] : layout.offsets[i + 1]] = np.repeat(row_head, row_len)
        first_head += num_heads
    if not specs:
        raise ValueError("the model has no LoRA B on any attention projection; nothing to map to heads")
    return HeadMap(modules=tuple(specs), head_index=head_index)
