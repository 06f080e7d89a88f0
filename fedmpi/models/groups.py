"""Parameter groups: which elements of the flat trainable vector each group owns.

A group is the unit a strategy scores, keeps or prunes, uploads and combines: an attention
head of one module (the paper's kind), a transformer block (layer finetuning) or a rank
triplet (FedARA). Masks, payloads, aggregation and the result file speak only of groups;
what a group *is* is decided where the map is built (a PEFT method, a strategy).

Groups come in families: a module that owns consecutive group ids (an attention module and
its heads, a LoRA module and its rank triplets, the model's blocks). Family f's group g has
the global id ``offsets[f] + g``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi.results_schema import HEAD_FAMILY_KINDS

ATTENTION_KINDS = HEAD_FAMILY_KINDS  # a head of such a module; the result file's names for them
GROUP_KINDS = (*ATTENTION_KINDS, "block", "triplet", "factor")  # factor: a LoRA module's A or B


@dataclass(frozen=True)
class GroupFamily:
    """One module owning ``num_groups`` consecutive groups."""

    name: str  # module path in the (peft-wrapped) model, or a label such as "blocks"
    kind: str  # one of GROUP_KINDS
    num_groups: int
    width: int = 0  # elements per group along the split axis (d_head for heads; 0 if not meaningful)

    def __post_init__(self) -> None:
        if self.kind not in GROUP_KINDS:
            raise ValueError(f"group kind must be one of {GROUP_KINDS}, got {self.kind!r}")
        if self.num_groups < 1:
            raise ValueError(f"{self.name}: a group family needs at least one group")


@dataclass(frozen=True, eq=False)
class GroupMap:
    """Global group ids over the flat vector; -1 marks elements no group owns (always sent)."""

    families: tuple[GroupFamily, ...]
    group_index: np.ndarray  # int32 per flat element

    @property
    def num_groups(self) -> int:
        return sum(f.num_groups for f in self.families)

    @property
    def offsets(self) -> np.ndarray:
        """int64, len(families) + 1: the first global group id of each family."""
        return np.concatenate([[0], np.cumsum([f.num_groups for f in self.families])]).astype(np.int64)

    def element_mask(self, group_mask: np.ndarray) -> np.ndarray:
        """Bool per element: True for elements no group owns and for the kept groups' elements."""
        group_mask = np.asarray(group_mask, dtype=bool)
        if group_mask.shape != (self.num_groups,):
            raise ValueError(f"group mask has shape {group_mask.shape}, expected ({self.num_groups},)")
        return np.append(group_mask, True)[self.group_index]  # index -1 picks the appended True

    def group_sizes(self) -> np.ndarray:
        """int64 per group: how many elements it owns."""
        return np.bincount(self.group_index[self.group_index >= 0], minlength=self.num_groups).astype(np.int64)

    @classmethod
    def empty(cls, numel: int) -> GroupMap:
        """No groups: every element is always sent (plain FedAvg needs no more)."""
        return cls(families=(), group_index=np.full(numel, -1, dtype=np.int32))
