"""The skeleton every PEFT method shares, as peft's own methods do: wrap, say what trains, map it to heads.

A method turns a Hugging Face backbone into the model clients fine-tune: it wraps the
backbone (peft does the work), leaving exactly its own parameters and the task head
trainable, and it says which elements of the flat trainable vector each attention head
owns (`../shared/notes/platform.md` section 1), so the paper's head pruning applies to it.
The accounting figures (the paper's OPs and upload) follow from the same map.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn
from transformers import PreTrainedModel

from fedmpi.models.groups import GroupMap
from fedmpi.models.params import TrainableLayout


class PeftMethod(Protocol):
    """Implemented by a frozen dataclass whose fields are the method's options (``peft.<name>``)."""

    name: str  # the config's peft.method

    def wrap(self, backbone: PreTrainedModel, *, kind: str, task_head: list[str] | None, seed: int) -> nn.Module:
        """The peft-wrapped model: exactly the method's parameters and ``task_head``'s modules train.

        ``kind`` is the task kind ("classification" | "generation"); every random
        initialisation happens after ``torch.manual_seed(seed)``.
        """
        ...

    def head_groups(self, model: nn.Module, layout: TrainableLayout) -> GroupMap:
        """Which elements each attention head owns (one family per attention module that owns any)."""
        ...
