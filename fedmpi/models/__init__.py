"""Backbones wrapped by a PEFT method, their flat trainable vector, its groups, and head confidence.

``build_model`` gives a ``ModelBundle``; ``TrainableLayout`` moves the trainable weights in
and out as one float32 vector; ``GroupMap`` says which elements each attention head owns
(``attention_modules`` lists the heads; each method in ``fedmpi/peft_methods/`` maps its
parameters onto them); ``HeadConfidence`` measures the paper's head importance (Eq. 6) beside SDPA attention.
"""

from fedmpi.models.build import KINDS, ModelBundle, build_model, hf_model, set_attention
from fedmpi.models.groups import GroupFamily, GroupMap
from fedmpi.models.heads import AttentionHeads, AttentionModule, HeadMap, attention_modules, head_map_from_groups
from fedmpi.models.importance import (
    CONFIDENCE_ATTENTION,
    HeadConfidence,
    ImportanceOptions,
    chunked_confidence,
    confidence,
    use_confidence_attention,
)
from fedmpi.models.params import TrainableLayout
from fedmpi.models.tiny import MINILM_NAME, TINY_NAMES

__all__ = [
    "CONFIDENCE_ATTENTION",
    "KINDS",
    "MINILM_NAME",
    "TINY_NAMES",
    "AttentionHeads",
    "AttentionModule",
    "GroupFamily",
    "GroupMap",
    "HeadConfidence",
    "ImportanceOptions",
    "chunked_confidence",
    "HeadMap",
    "ModelBundle",
    "TrainableLayout",
    "attention_modules",
    "build_model",
    "confidence",
    "head_map_from_groups",
    "hf_model",
    "set_attention",
    "use_confidence_attention",
]
