"""P-tuning v2: prefix tuning at every layer (peft ``PrefixTuningConfig``, no projection).

The paper's "P-tuning" trains Tp virtual keys and values per attention layer. peft keeps
them in one table of shape (Tp, 2 * P * d) for P prefix slots: column c is entry
``c // d``, head ``(c mod d) // dh``; slot p's virtual keys are entry 2p, its values entry
2p + 1. platform.md section 1: head h of a slot's attention module owns its d_head slice
of every virtual key and value of that slot.

The slots: one per self-attention module in a decoder-only model. In an encoder-decoder
model peft lays out, per decoder layer, a self-attention slot and then a cross-attention
slot (its legacy cache tuples are (self k, self v, cross k, cross v)); fedmpi asks peft for
2 x L "layers" so each decoder layer's self-attention gets a prefix of its own (with L,
peft would hand layers l and l + L/2 the same entries). Under transformers 5 peft then
discards the cross-attention slots (an empty cross cache): those columns get no gradient.
They stay mapped to their cross-attention heads, as peft means them, and are pruned with
them. The encoder receives no prefix (peft gives the virtual tokens to the decoder cache).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
from peft import PrefixTuningConfig
from torch import nn
from transformers import PreTrainedModel

from fedmpi.models.groups import GroupMap
from fedmpi.models.heads import AttentionModule, assemble_groups, attention_modules
from fedmpi.models.params import TrainableLayout
from fedmpi.peft_methods.common import check_trainable, task_type, unmappable, wrap_peft
from fedmpi.peft_methods.virtual_tokens import VirtualTokenMethod, embedding_table, is_virtual_token_param


def prefix_slots(model: nn.Module) -> list[AttentionModule]:
    """The attention module of each of peft's prefix slots, in table order."""
    attentions = attention_modules(model)
    if not getattr(model.config, "is_encoder_decoder", False):
        return [a for a in attentions if a.kind == "self"]
    decoder_self = [a for a in attentions if a.kind == "decoder_self"]
    cross = [a for a in attentions if a.kind == "cross"]
    if len(decoder_self) != len(cross):
        raise unmappable("prefix", model, f"{len(decoder_self)} decoder self-attention modules but {len(cross)} cross")
    return [a for pair in zip(decoder_self, cross) for a in pair]


def _accepts_past_key_values(model: nn.Module) -> bool:
    return any("past_key_values" in inspect.signature(m.forward).parameters for m in (model, model.base_model))


@dataclass(frozen=True)
class Prefix(VirtualTokenMethod):
    name = "prefix"

    def wrap(self, backbone: PreTrainedModel, *, kind: str, task_head: list[str] | None, seed: int) -> nn.Module:
        if kind == "classification" and not _accepts_past_key_values(backbone):
            # peft 0.21 feeds the prefix to a classifier as `past_key_values`; transformers 5
            # renamed that argument `cache`, and peft then refuses at the first forward.
            raise unmappable(self.name, backbone, (
                f"peft's prefix tuning for sequence classification passes past_key_values, which "
                f"{type(backbone).__name__}.forward no longer accepts under transformers 5; prefix tuning runs "
                "only as generation (T5, BART, GPT-2)"
            ))  # fmt: skip
        slots = prefix_slots(backbone)
        if not slots:
            raise unmappable(self.name, backbone, "no self-attention module to receive the prefix")
        geometry = {(a.num_heads, a.head_dim) for a in slots}
        if len(geometry) != 1:
            raise unmappable(self.name, backbone, f"its prefix layers differ in head geometry {sorted(geometry)}")
        (num_heads, head_dim), = geometry
        config = PrefixTuningConfig(
            task_type=task_type(kind, backbone), num_virtual_tokens=self.num_virtual_tokens, prefix_projection=False,
            num_layers=len(slots), token_dim=num_heads * head_dim, num_attention_heads=num_heads,
            modules_to_save=None if task_head is None else list(task_head),
        )  # fmt: skip
        model = wrap_peft(backbone, config, seed=seed, method=self.name)
        check_trainable(model, method=self.name, kind=kind, task_head=task_head, is_own=is_virtual_token_param)
        return model

    def head_groups(self, model: nn.Module, layout: TrainableLayout) -> GroupMap:
        slots = prefix_slots(model)
        (num_tokens, columns), flat = embedding_table(layout)
        width = slots[0].width
        if columns != len(slots) * 2 * width:
            raise unmappable(self.name, model, (
                f"the prefix table has {columns} columns, not {len(slots)} slots x 2 x {width}"
            ))  # fmt: skip
        c = np.arange(columns)
        slot_of_column = c // (2 * width)
        head_of_column = (c % width) // slots[0].head_dim
        owned: dict[int, list[tuple[slice, np.ndarray]]] = {}
        attentions = attention_modules(model)
        positions = {a.path: k for k, a in enumerate(attentions)}
        for slot, a in enumerate(slots):
            local = np.tile(np.where(slot_of_column == slot, head_of_column, -1), num_tokens).astype(np.int32)
            owned[positions[a.path]] = [(flat, local)]
        return assemble_groups(layout.numel, attentions, owned)

