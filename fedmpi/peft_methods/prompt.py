"""Prompt tuning (peft ``PromptTuningConfig``): Tp trainable input embeddings.

platform.md section 1: an input embedding belongs to no head, so fedmpi uses the weakest
mapping that still lets the paper's pruning act on it: column block [h*dh, (h+1)*dh) of
every virtual token belongs to head h of the FIRST attention module (the one that reads the
tokens first), and is pruned by that head's importance. The task head belongs to no head.

fedmpi asks peft for one prompt (``num_transformer_submodules=1``): peft's default for
encoder-decoder models (2) allocates a second Tp rows that transformers 5 never reads, so
half the table would be trained and sent for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import PromptTuningConfig
from torch import nn
from transformers import PreTrainedModel

from fedmpi.models.arch import arch_spec
from fedmpi.models.groups import GroupMap
from fedmpi.models.heads import assemble_groups, attention_modules, element_heads
from fedmpi.models.params import TrainableLayout
from fedmpi.peft_methods.common import check_trainable, task_type, unmappable, wrap_peft
from fedmpi.peft_methods.virtual_tokens import VirtualTokenMethod, embedding_table, is_virtual_token_param, token_dim


@dataclass(frozen=True)
class Prompt(VirtualTokenMethod):
    name = "prompt"

    def wrap(self, backbone: PreTrainedModel, *, kind: str, task_head: list[str] | None, seed: int) -> nn.Module:
        if kind == "classification" and getattr(backbone.config, "is_encoder_decoder", False):
            raise unmappable(self.name, backbone, (
                f"{type(backbone).__name__} pools at the EOS token it finds in input_ids, and prompt tuning feeds "
                "inputs_embeds (transformers raises NotImplementedError); use generation for T5/BART"
            ))  # fmt: skip
        spec = arch_spec(backbone.config.model_type)
        if kind == "classification" and spec is not None and spec.pools_last_token:
            raise unmappable(self.name, backbone, (
                f"{type(backbone).__name__} pools the last non-padding token, which it cannot find from the "
                "inputs_embeds prompt tuning feeds (it would pool a pad token of fedmpi's right-padded batches)"
            ))  # fmt: skip
        attentions = attention_modules(backbone)
        if not attentions:
            raise unmappable(self.name, backbone, "it has no attention module to own the prompt")
        config = PromptTuningConfig(
            task_type=task_type(kind, backbone), num_virtual_tokens=self.num_virtual_tokens, token_dim=token_dim(backbone),
            num_attention_heads=attentions[0].num_heads, num_layers=len(attentions), num_transformer_submodules=1,
            modules_to_save=None if task_head is None else list(task_head),
        )  # fmt: skip
        model = wrap_peft(backbone, config, seed=seed, method=self.name)
        check_trainable(model, method=self.name, kind=kind, task_head=task_head, is_own=is_virtual_token_param)
        return model

    def head_groups(self, model: nn.Module, layout: TrainableLayout) -> GroupMap:
        first = attention_modules(model)[0]
        shape, flat = embedding_table(layout)
        if shape[1] != first.width:
            raise unmappable(self.name, model, (
                f"prompt tokens are {shape[1]} wide but {first.path} has {first.num_heads} heads x {first.head_dim}"
            ))  # fmt: skip
        local = element_heads(shape, 1, first.num_heads, first.head_dim)
        return assemble_groups(layout.numel, [first], {0: [(flat, local)]})

