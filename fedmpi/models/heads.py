"""Where the attention heads are: every attention module's path, kind and head geometry.

The generic half of "what a head owns" (platform.md section 1): this module finds every
attention module of a (peft-wrapped or plain) model, with its head count and width, its
q/k/v projections and its output projection W_o, and gives the per-element head of a
tensor split along one axis. Each PEFT method (``fedmpi/peft_methods/``) builds its
``GroupMap`` from these facts; no method carries its own architecture tables.

Head counts and widths come from the attention modules themselves, never from a table of
model sizes; an attention module without them is an error naming the module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers.pytorch_utils import Conv1D

from fedmpi.models.arch import (
    CROSS_ATTENTION_MODULES,
    FUSED_QKV_PROJECTIONS,
    HEAD_DIM_ATTRS,
    NUM_HEADS_ATTRS,
    OUTPUT_PROJECTIONS,
    QKV_PROJECTIONS,
    SIBLING_OUTPUT_PROJECTION,
)
from fedmpi.models.groups import ATTENTION_KINDS, GroupFamily, GroupMap

HEAD_KINDS = ATTENTION_KINDS


@dataclass(frozen=True)
class AttentionModule:
    """One attention module: where it is, what it attends, and its projections' paths."""

    path: str  # module path in the model it was found in
    kind: str  # one of HEAD_KINDS
    num_heads: int
    head_dim: int
    qkv: tuple[str, ...]  # paths of its q, k, v projections (one path for GPT-2's fused c_attn)
    output: str | None  # path of W_o, None if the module has none fedmpi recognises

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def fused(self) -> bool:
        return len(self.qkv) == 1


def _int_attr(module: torch.nn.Module, names: tuple[str, ...]) -> int | None:
    return next((v for v in (getattr(module, n, None) for n in names) if isinstance(v, int)), None)


def _head_geometry(attention: torch.nn.Module, name: str) -> tuple[int, int]:
    num_heads, head_dim = _int_attr(attention, NUM_HEADS_ATTRS), _int_attr(attention, HEAD_DIM_ATTRS)
    if num_heads is None or head_dim is None:
        raise ValueError(
            f"cannot split {name!r} into heads: {type(attention).__name__} exposes no head count/width "
            f"(looked for {NUM_HEADS_ATTRS} and {HEAD_DIM_ATTRS}); unsupported architecture"
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


def _output_projection(path: str, children: set[str], modules: dict[str, torch.nn.Module]) -> str | None:
    inside = sorted(children & OUTPUT_PROJECTIONS)
    if inside:
        return f"{path}.{inside[0]}"
    parent, _, leaf = path.rpartition(".")
    own_leaf, sibling = SIBLING_OUTPUT_PROJECTION
    candidate = f"{parent}.{sibling}" if parent else sibling
    return candidate if leaf == own_leaf and candidate in modules else None


def attention_modules(model: torch.nn.Module) -> list[AttentionModule]:
    """Every attention module of ``model`` in module order: a module with q/k/v (or fused) children."""
    modules = dict(model.named_modules())
    found = []
    for path, module in modules.items():
        order = [name for name, _ in module.named_children()]
        children = set(order)
        separate = [c for c in order if c in QKV_PROJECTIONS]
        fused = [c for c in order if c in FUSED_QKV_PROJECTIONS]
        if not separate and not fused:
            continue
        num_heads, head_dim = _head_geometry(module, path)
        found.append(AttentionModule(
            path=path, kind=_attention_kind(model, path), num_heads=num_heads, head_dim=head_dim,
            qkv=tuple(f"{path}.{c}" for c in (separate or fused)),
            output=_output_projection(path, children, modules),
        ))  # fmt: skip
    return found


def is_conv1d(module: torch.nn.Module) -> bool:
    """GPT-2's Conv1D stores its weight as (in, out), the transpose of ``nn.Linear``."""
    return isinstance(getattr(module, "base_layer", module), Conv1D)


def element_heads(shape: tuple[int, ...], axis: int, num_heads: int, head_dim: int) -> np.ndarray:
    """Local head (0..num_heads-1) of every element of a tensor of ``shape``, flattened row-major.

    Index j along ``axis`` belongs to head ``(j mod width) // head_dim`` (width = heads x
    head_dim), so an axis of 3 x width (GPT-2's fused q, k, v) splits each segment by head.
    """
    width = num_heads * head_dim
    length = shape[axis]
    if length % width:
        raise ValueError(f"a tensor of shape {shape} cannot be split by {num_heads} heads x {head_dim} on axis {axis}")
    along = (np.arange(length) % width) // head_dim
    view = [1] * len(shape)
    view[axis] = length
    return np.broadcast_to(along.reshape(view), shape).reshape(-1).astype(np.int32)


def assemble_groups(
    numel: int, attentions: list[AttentionModule], owned: dict[int, list[tuple[slice, np.ndarray]]]
) -> GroupMap:
    """The GroupMap from pieces: ``owned[i]`` lists (flat range, local head per element) of attention i.

    One family per attention module that owns something, in module order. Pieces may share
    a flat range (one table split between layers): each claims only its elements with a
    local head >= 0; elements no piece claims are -1.
    """
    if not owned:
        raise ValueError("no attention module owns any trainable element; nothing to map to heads")
    order = sorted(owned)
    owners = [attentions[i] for i in order]
    offsets = np.concatenate([[0], np.cumsum([a.num_heads for a in owners])])
    index = np.full(numel, -1, dtype=np.int32)
    for family, i in enumerate(order):
        for flat, local in owned[i]:
            part = index[flat]  # a view
            claimed = local >= 0
            part[claimed] = offsets[family] + local[claimed]
    families = tuple(GroupFamily(a.path, a.kind, a.num_heads, a.head_dim) for a in owners)
    return GroupMap(families=families, group_index=index)


# ------------------------------------------------------------------ the head map of old callers
@dataclass(frozen=True)
class AttentionHeads:
    """One attention module whose parameters heads own (the old name of a head ``GroupFamily``)."""

    name: str
    kind: str
    num_heads: int
    head_dim: int


@dataclass(frozen=True, eq=False)
class HeadMap:
    """The head-only view of a ``GroupMap`` that callers not yet converted to groups read."""

    modules: tuple[AttentionHeads, ...]
    head_index: np.ndarray

    @property
    def num_heads_total(self) -> int:
        return sum(m.num_heads for m in self.modules)

    @property
    def head_offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([m.num_heads for m in self.modules])]).astype(np.int64)

    def element_mask(self, head_mask: np.ndarray) -> np.ndarray:
        head_mask = np.asarray(head_mask, dtype=bool)
        if head_mask.shape != (self.num_heads_total,):
            raise ValueError(f"head_mask has shape {head_mask.shape}, expected ({self.num_heads_total},)")
        return np.append(head_mask, True)[self.head_index]


def head_map_from_groups(groups: GroupMap) -> HeadMap:
    """The HeadMap with the same ids as ``groups`` (every family must be a head family)."""
    stray = [f.name for f in groups.families if f.kind not in HEAD_KINDS]
    if stray:
        raise ValueError(f"group family {stray[0]!r} is not attention heads; it has no HeadMap view")
    modules = tuple(AttentionHeads(f.name, f.kind, f.num_groups, f.width) for f in groups.families)
    return HeadMap(modules=modules, head_index=groups.group_index)
