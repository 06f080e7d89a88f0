"""What the two virtual-token methods share: peft's one embedding table and its column heads.

Prompt tuning and P-tuning v2 (prefix tuning without projection) each train a single
``prompt_encoder.<adapter>.embedding.weight`` of shape (Tp * rows, columns); how its
columns map to heads is each method's own.
"""

from __future__ import annotations

from torch import nn

from fedmpi.models.params import TrainableLayout

EMBEDDING_MARKER = "prompt_encoder."


def is_virtual_token_param(name: str) -> bool:
    return name.startswith(EMBEDDING_MARKER) or f".{EMBEDDING_MARKER}" in name


def embedding_index(layout: TrainableLayout) -> int:
    """Index in ``layout`` of the virtual-token table (exactly one)."""
    found = [i for i, n in enumerate(layout.names) if is_virtual_token_param(n)]
    if len(found) != 1:
        raise ValueError(f"expected one virtual-token embedding among the trainable parameters, found {len(found)}")
    return found[0]


def token_dim(model: nn.Module) -> int:
    """Width of the model's input embeddings (what a prompt token replaces)."""
    return int(model.get_input_embeddings().embedding_dim)
