"""The per-rank role: train this rank's share of a round's clients, evaluate its share of batches.

One model instance per rank; clients train one after another, each starting from the
global vector. The strategy decides whether importance is measured, when the head mask
is chosen (after training, as in Algorithm 1, or before it, freezing pruned heads), and
which heads are uploaded.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmpi import seeding
from fedmpi.client import LocalTrainer
from fedmpi.data import Partition, TokenizedSplit
from fedmpi.evaluation import evaluate_batches
from fedmpi.payload import ClientUpdate, make_update
from fedmpi.strategies import Strategy


def assign_clients(selected: np.ndarray, worker_ranks: list[int]) -> dict[int, list[int]]:
    """Deal the round's clients (ascending ids) round-robin over the ranks that train."""
    plan: dict[int, list[int]] = {r: [] for r in worker_ranks}
    for i, client in enumerate(selected.tolist()):
        plan[worker_ranks[i % len(worker_ranks)]].append(client)
    return plan


class UploadSizer:
    """The paper's communication figure: fp32 bytes of the adapter parameters a client sends."""

    def __init__(self, head_index: np.ndarray, task_head: np.ndarray, num_heads_total: int) -> None:
        self.dense = int(((head_index < 0) & ~task_head).sum())
        self.per_head = np.bincount(head_index[head_index >= 0], minlength=num_heads_total)

    def __call__(self, head_mask: np.ndarray | None) -> int:
        heads = self.per_head.sum() if head_mask is None else self.per_head[head_mask].sum()
        return 4 * (self.dense + int(heads))


class Worker:
    def __init__(
        self,
        trainer: LocalTrainer,
        strategy: Strategy,
        partition: Partition,
        eval_split: TokenizedSplit,
        *,
        rank: int,
        seed: int,
        ops_per_sample: float,
        num_epochs: int,
    ) -> None:
        self.trainer = trainer
        self.strategy = strategy
        self.partition = partition
        self.eval_split = eval_split
        self.rank = rank
        self.seed = seed
        self.ops_per_sample = ops_per_sample
        self.num_epochs = num_epochs
        bundle = trainer.bundle
        self.head_index = bundle.head_map.head_index
        self.upload_size = UploadSizer(self.head_index, bundle.layout.element_task_head_mask(), bundle.head_map.num_heads_total)

    def train_client(self, client: int, params: np.ndarray, round_: int) -> ClientUpdate:
        indices = self.partition.client_indices(client)
        strategy, trainer = self.strategy, self.trainer
        prune_rng = seeding.rng(self.seed, seeding.PRUNE, round_, client)
        if strategy.mask_timing == "pre_train":
            scores = trainer.measure_importance(indices, params, round_, client) if strategy.needs_importance else None
            mask = strategy.choose_mask(scores, prune_rng)
            result = trainer.train(indices, params, round_, client, record_importance=False, kept_heads=mask)
        else:
            result = trainer.train(indices, params, round_, client, record_importance=strategy.needs_importance)
            scores = result.scores
            mask = strategy.choose_mask(scores, prune_rng)
        return make_update(
            result.delta,
            self.head_index,
            mask,
            scores,
            client=client,
            rank=self.rank,
            num_samples=int(indices.size),
            train_loss=result.train_loss,
            seconds=result.seconds,
            ops=self.ops_per_sample * indices.size * self.num_epochs,
            paper_bytes=self.upload_size(mask),
        )

    def train_clients(self, clients: list[int], params: np.ndarray, round_: int) -> list[ClientUpdate]:
        return [self.train_client(c, params, round_) for c in clients]

    def evaluate(self, bounds: list[tuple[int, int]], params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        bundle = self.trainer.bundle
        bundle.layout.set_flat(bundle.model, torch.from_numpy(params))
        return evaluate_batches(
            bundle.model,
            self.eval_split,
            bounds,
            pad_token_id=bundle.pad_token_id,
            device=self.trainer.device,
            tokenizer=bundle.tokenizer,
        )
