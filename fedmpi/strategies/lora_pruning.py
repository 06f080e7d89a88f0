"""The paper's head pruning inside a federated-LoRA strategy: ``strategy.head_pruning`` of fedit, ffa_lora,
rolora, flora and fedex_lora.

One component that ``LoraStrategy`` holds when the sub-section is set, so every LoRA rule gets
the same pruning. Its groups are the run's heads (each head owns its rows of every q/k/v
LoRA B, ids as in ``bundle.groups``) followed by one group per LoRA module's A, so a
strategy can still train or send A on its own (FFA-LoRA never sends it, RoLoRA alternates).
The strategy's factor mask (``LoraStrategy.factor_train_mask``) becomes a mask over these groups;
then, as in ``head_pruning``: each client keeps its top (1 - sparsity) heads by confidence
(Eq. 7) or a random share (B2), chosen before training (``pre_train``: only kept heads train)
or after it (``post_train``), and uploads only the kept heads' rows of B. A is shared by every
head and is never pruned, so a client's realised sparsity is the share of the heads it did not
upload (0 in RoLoRA's A rounds, which prune nothing). The server turns the masks into
``HeadWeights``: head h's weight of client c is its score alpha_hc (Eq. 8, ``weighting:
importance``) or p_c (``samples``), over the clients that kept h, normalised per head; the
strategy's rule applies them to B's rows (and to the products B_c A_c row by row), and p_c to
A and the task head.

Where it does not apply (config errors naming why): HetLoRA and FlexLoRA, whose rank triplets
cut across heads (and FlexLoRA's SVD mixes every head's rows), and FedSA-LoRA, whose B never
leaves the client.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedmpi.config import LoraHeadPruningConfig
from fedmpi.models.groups import ATTENTION_KINDS, GroupFamily, GroupMap
from fedmpi.models.lora_factors import LoraFactors
from fedmpi.payload import ClientUpdate
from fedmpi.strategies.base import ClientContext
from fedmpi.strategies.head_pruning import choose_groups
from fedmpi.strategies.lora_combine import HeadWeights


def pruned_groups(heads: GroupMap, factors: tuple[LoraFactors, ...]) -> GroupMap:
    """The heads' groups (same ids) followed by one group per LoRA module's A (id num_heads + m)."""
    if heads.num_groups == 0 or any(f.kind not in ATTENTION_KINDS for f in heads.families):
        raise ValueError("strategy.head_pruning needs the model's attention heads as its groups (peft.method=lora on q, k, v)")
    index = heads.group_index.copy()
    for m, f in enumerate(factors):
        if (index[f.a] >= 0).any() or (index[f.b] < 0).any():
            raise ValueError(f"strategy.head_pruning: LoRA module {f.module!r} is not an attention q/k/v projection")
        index[f.a] = heads.num_groups + m
    families = heads.families + tuple(GroupFamily(f"{f.module}.lora_A", "factor", 1) for f in factors)
    return GroupMap(families, index)


class LoraHeadPruning:
    """Masks, scores and server weights of head pruning over ``pruned_groups``."""

    def __init__(self, options: LoraHeadPruningConfig, heads: GroupMap, factors: tuple[LoraFactors, ...]) -> None:
        self.options = options
        self.num_heads = heads.num_groups
        self.num_factors = len(factors)
        self.head_index = heads.group_index
        self.groups = pruned_groups(heads, factors)

    @property
    def importance(self) -> str | None:
        """Confidence is recorded while training only when the mask is chosen after it (as ``head_pruning``)."""
        o = self.options
        return "confidence" if o.pruning == "importance" and o.mask_timing == "post_train" else None

    @property
    def needs_confidence(self) -> bool:
        return self.options.pruning == "importance"

    # ---- client side -----------------------------------------------------------------------
    def from_factors(self, factor_mask: np.ndarray | None) -> np.ndarray:
        """A mask over ``factor_groups`` (A, B per module; None: all) as a mask over ``pruned_groups``."""
        out = np.ones(self.num_heads + self.num_factors, dtype=bool)
        if factor_mask is None:
            return out
        b = factor_mask[1::2]
        if b.any() != b.all():
            raise ValueError("strategy.head_pruning: a head owns rows of every module's B, which must train all or none")
        out[: self.num_heads] = bool(b.all())
        out[self.num_heads :] = factor_mask[0::2]
        return out

    def _keep(self, ctx: ClientContext, mask: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
        mask = mask.copy()
        mask[: self.num_heads] &= choose_groups(self.options, self.num_heads, ctx.rng, scores)
        return mask

    def train_mask(self, ctx: ClientContext, factor_mask: np.ndarray | None, score: Callable[[], np.ndarray]) -> np.ndarray:
        mask = self.from_factors(factor_mask)
        if self.options.mask_timing == "post_train":
            return mask
        return self._keep(ctx, mask, score() if self.options.pruning == "importance" else None)

    def upload_mask(self, ctx: ClientContext, scores: np.ndarray | None, trained: np.ndarray) -> np.ndarray:
        return trained if self.options.mask_timing == "pre_train" else self._keep(ctx, trained, scores)

    def realised_sparsity(self, factor_mask: np.ndarray | None, uploaded: np.ndarray) -> float:
        """The share of the heads a client did not upload, of the heads (the A groups are not pruned);
        0 when its strategy trains no B this round (RoLoRA's A rounds: nothing was pruned)."""
        if not self.from_factors(factor_mask)[: self.num_heads].any():
            return 0.0
        return 1.0 - float(uploaded[: self.num_heads].mean())

    def group_scores(self, scores: np.ndarray | None) -> np.ndarray | None:
        """Per-head scores with a 0 for every A group (A is not scored)."""
        if scores is None:
            return None
        return np.concatenate([np.asarray(scores, np.float32), np.zeros(self.num_factors, np.float32)])

    # ---- server side -----------------------------------------------------------------------
    def head_weights(self, updates: list[ClientUpdate], client_weights: np.ndarray) -> HeadWeights:
        """Each head's weights over the clients that kept it: scores (Eq. 8) or p_c, normalised per head."""
        kept = np.stack([u.group_mask[: self.num_heads] for u in updates]).astype(np.float64)
        if self.options.weighting == "importance":
            alpha = np.stack([u.scores[: self.num_heads] for u in updates]).astype(np.float64) * kept
        else:
            alpha = kept * np.asarray(client_weights, np.float64)[:, None]
        total = alpha.sum(axis=0)
        weights = np.divide(alpha, total, out=np.zeros_like(alpha), where=total > 0)
        return HeadWeights(weights, self.head_index)
