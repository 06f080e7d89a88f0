"""What the two virtual-token methods share: their option, peft's one embedding table and its slice.

Prompt tuning and P-tuning v2 (prefix tuning without projection) each take one option, Tp
(``peft.<method>.num_virtual_tokens``, config.VirtualTokensConfig), and train a single
``prompt_encoder.<adapter>.embedding.weight`` of shape (Tp * rows, columns); how its
columns map to heads is each method's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fedmpi.models.params import TrainableLayout

EMBEDDING_MARKER = "prompt_encoder."


@dataclass(frozen=True)
class VirtualTokenMethod:
    """The options of a virtual-token method, as peft's ``PromptLearningConfig`` is the base of its configs."""

    num_virtual_tokens: int = 20  # Tp

    name: ClassVar[str]  # each method's peft.method

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ValueError(f"peft.{self.name}.num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")


def is_virtual_token_param(name: str) -> bool:
    return name.startswith(EMBEDDING_MARKER) or f".{EMBEDDING_MARKER}" in name


def embedding_index(layout: TrainableLayout) -> int:
    """Index in ``layout`` of the virtual-token table (exactly one)."""
    found = [i for i, n in enumerate(layout.names) if is_virtual_token_param(n)]
    if len(found) != 1:
        raise ValueError(f"expected one virtual-token embedding among the trainable parameters, found {len(found)}")
    return found[0]


def embedding_table(layout: TrainableLayout) -> tuple[tuple[int, ...], slice]:
    """The virtual-token table's shape (Tp * rows, columns) and its range in the flat trainable vector."""
    i = embedding_index(layout)
    return layout.shapes[i], layout.slice_of(layout.names[i])


def token_dim(model: nn.Module) -> int:
    """Width of the model's input embeddings (what a prompt token replaces)."""
    return int(model.get_input_embeddings().embedding_dim)
