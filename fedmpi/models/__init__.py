"""Backbones with LoRA, their flat trainable vector, its attention heads, and head confidence.

``build_model`` gives a ``ModelBundle``; ``TrainableLayout`` moves the trainable weights in
and out as one float32 vector; ``HeadMap`` says which elements each attention head owns;
``HeadConfidence`` measures the paper's head importance (Eq. 6) beside SDPA attention.
"""

from fedmpi.models.build import KINDS, LoraSettings, ModelBundle, build_model, set_attention, wrap_with_lora
from fedmpi.models.heads import AttentionHeads, HeadMap, build_head_map
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
    "HeadConfidence",
    "ImportanceOptions",
    "chunked_confidence",
    "HeadMap",
    "LoraSettings",
    "ModelBundle",
    "TrainableLayout",
    "build_head_map",
    "build_model",
    "confidence",
    "set_attention",
    "use_confidence_attention",
    "wrap_with_lora",
]
