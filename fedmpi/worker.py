"""The per-rank role: train this rank's share of a round's clients, evaluate its share of batches.

One model instance per rank; each starting from the global vector (copied to the device
once per round), clients train one after another, or G at a time in one forward and
backward (``runtime.clients_per_step``, ``fedmpi/batched.py``). The strategy's client hooks
decide, from the client's context and the server's message for the round, which groups
train and which are uploaded; the trainer records the importance the strategy asks for.
"""

from __future__ import annotations

import numpy as np
import torch

from collections.abc import Callable
from typing import Any

from fedmpi import seeding
from fedmpi.batched import GroupTrainer
from fedmpi.client import LocalResult, LocalTrainer
from fedmpi.data import Partition, TokenizedSplit
from fedmpi.evaluation import evaluate_batches
from fedmpi.payload import ClientUpdate, make_update, realised_sparsity
from fedmpi.models.groups import GroupMap
from fedmpi.strategies import ClientContext, Strategy


class UploadSizer:
    """The paper's communication figure: fp32 bytes of the adapter parameters a client sends."""

    def __init__(self, groups: GroupMap, task_head: np.ndarray) -> None:
        index = groups.group_index
        self.dense = int(((index < 0) & ~task_head).sum())
        self.per_group = groups.group_sizes()

    def __call__(self, group_mask: np.ndarray | None) -> int:
        kept = self.per_group.sum() if group_mask is None else self.per_group[group_mask].sum()
        return 4 * (self.dense + int(kept))


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
        ops_per_sample: Callable[[float], float],
        num_epochs: int,
        clients_per_step: int = 1,
        eval_examples: np.ndarray | None = None,
    ) -> None:
        self.trainer = trainer
        self.strategy = strategy
        self.partition = partition
        self.eval_split = eval_split
        self.rank = rank
        self.seed = seed
        self.ops_per_sample = ops_per_sample  # the paper's analytic OPs of one sequence, given the sparsity
        self.num_epochs = num_epochs
        self.groups = strategy.groups
        self.upload_size = UploadSizer(self.groups, trainer.bundle.layout.element_task_head_mask())
        self.group_trainer = GroupTrainer(trainer) if clients_per_step > 1 else None
        self.eval_examples = np.arange(len(eval_split), dtype=np.int64) if eval_examples is None else eval_examples

    def train_group(self, clients: list[int], params: torch.Tensor, round_: int, message: Any = None) -> list[ClientUpdate]:
        """Train clients together (one alone with clients_per_step=1); each client's hooks
        see its own context and random stream, in the same order as when trained alone."""
        indices = [self.partition.client_indices(c) for c in clients]
        strategy, trainer = self.strategy, self.trainer
        contexts = [
            ClientContext(c, round_, int(i.size), seeding.rng(self.seed, seeding.PRUNE, round_, c), message)
            for c, i in zip(clients, indices)
        ]
        measured: list[np.ndarray | None] = [None] * len(clients)

        def scorer(k: int) -> Callable[[], np.ndarray]:  # the received model's importance, for masks chosen before training
            def score() -> np.ndarray:
                measured[k] = trainer.measure_importance(indices[k], params, round_, clients[k])
                return measured[k]

            return score

        trained = [strategy.train_mask(ctx, scorer(k)) for k, ctx in enumerate(contexts)]
        record = strategy.importance == "confidence"
        if self.group_trainer is None:
            (client,), (idx,), (mask,) = clients, indices, trained
            results = [trainer.train(idx, params, round_, client, record_importance=record, trained_groups=mask)]
        else:
            results = self.group_trainer.train(clients, indices, params, round_, record_importance=record, trained_groups=trained)
        updates = []
        for k, (ctx, result) in enumerate(zip(contexts, results)):
            scores = result.scores if result.scores is not None else measured[k]
            mask = strategy.upload_mask(ctx, scores, trained[k])
            updates.append(self._update(clients[k], indices[k], result, mask, scores))
        return updates

    def _update(self, client: int, indices: np.ndarray, result: LocalResult, mask, scores) -> ClientUpdate:
        return make_update(
            result.delta,
            self.groups.group_index,
            mask,
            scores,
            client=client,
            rank=self.rank,
            num_samples=int(indices.size),
            train_loss=result.train_loss,
            seconds=result.seconds,
            device_seconds=result.device_seconds,
            peak_memory=result.peak_memory,
            ops=self.ops_per_sample(realised_sparsity(mask)) * indices.size * self.num_epochs,
            paper_bytes=self.upload_size(mask),
        )

    def train_clients(self, groups: list[list[int]], params: np.ndarray, round_: int, message: Any = None) -> list[ClientUpdate]:
        """Train this rank's step groups; the global vector crosses to the device once."""
        on_device = torch.from_numpy(params).to(self.trainer.device)
        return [u for group in groups for u in self.train_group(group, on_device, round_, message)]

    def evaluate(self, bounds: list[tuple[int, int]], params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Batches ``eval_examples[start:stop]`` of the evaluated examples."""
        bundle = self.trainer.bundle
        bundle.layout.set_flat(bundle.model, torch.from_numpy(params))
        with self.trainer.autocast():
            return evaluate_batches(
                bundle.model,
                self.eval_split,
                bounds,
                pad_token_id=bundle.pad_token_id,
                device=self.trainer.device,
                tokenizer=bundle.tokenizer,
                examples=self.eval_examples,
            )
