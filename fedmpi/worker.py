"""The per-rank role: train this rank's share of a round's clients, evaluate its share of batches.

One model instance per rank; each starting from the global vector (copied to the device
once per round), clients train one after another, or G at a time in one forward and
backward (``runtime.clients_per_step``, ``fedmpi/batched.py``). The strategy's client hooks
decide, from the client's context and the server's message for the round, which groups
train and which are uploaded; the trainer records the importance the strategy asks for.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from collections.abc import Callable
from typing import Any

from fedmpi import seeding
from fedmpi.batched import GroupTrainer
from fedmpi.client import LocalResult, LocalTrainer
from fedmpi.data import Partition, TokenizedSplit
from fedmpi.evaluation import evaluate_batches
from fedmpi.payload import ClientUpdate, make_update
from fedmpi.models.groups import GroupMap
from fedmpi.strategies import ClientContext, Strategy


class UploadSizer:
    """The paper's communication figure: fp32 bytes of the adapter parameters a client sends."""

    def __init__(self, groups: GroupMap, task_head: np.ndarray) -> None:
        index = groups.group_index
        self.dense = int(((index < 0) & ~task_head).sum())
        self.per_group = groups.group_sizes()
        # What a client downloads in the same convention: every adapter element of the global model.
        self.download = 4 * int((~task_head).sum())

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
        ops_per_sample: Callable[[float, int | None], float],
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
        self.ops_per_sample = ops_per_sample  # the paper's analytic OPs of one sequence, given the sparsity and LoRA rank
        self.num_epochs = num_epochs
        self.groups = strategy.groups
        self.upload_size = UploadSizer(self.groups, trainer.bundle.layout.element_task_head_mask())
        self.group_trainer = GroupTrainer(trainer) if clients_per_step > 1 else None
        self.eval_examples = np.arange(len(eval_split), dtype=np.int64) if eval_examples is None else eval_examples

    def train_group(
        self, clients: list[int], params: np.ndarray, on_device: torch.Tensor, round_: int, message: Any = None
    ) -> list[ClientUpdate]:
        """Train clients together (one alone with clients_per_step=1) from the global vector
        ``params`` (``on_device``: its copy on the device); each client's hooks see its own
        context and random stream, in the same order as when trained alone."""
        indices = [self.partition.client_indices(c) for c in clients]
        strategy, trainer = self.strategy, self.trainer
        contexts = [
            ClientContext(c, round_, int(i.size), seeding.rng(self.seed, seeding.PRUNE, round_, c), message)
            for c, i in zip(clients, indices)
        ]
        # Where each client starts: the global vector's device copy, unless the strategy gives it its own.
        starts = [strategy.client_params(ctx, params) for ctx in contexts]
        starts = [on_device if start is params else start for start in starts]
        measured: list[np.ndarray | None] = [None] * len(clients)

        def scorer(k: int) -> Callable[[], np.ndarray]:  # the received model's importance, for masks chosen before training
            def score() -> np.ndarray:
                measured[k] = trainer.measure_importance(indices[k], starts[k])
                return measured[k]

            return score

        trained = [strategy.train_mask(ctx, scorer(k)) for k, ctx in enumerate(contexts)]
        recorded = strategy.importance == "confidence"
        if self.group_trainer is None:
            (client,), (idx,), (mask,), (ctx,), (start,) = clients, indices, trained, contexts, starts
            results = [trainer.train(
                idx, start, round_, client, trained_groups=mask, remove_untrained=strategy.removes_untrained,
                record_importance=recorded and not strategy.scores_uploaded, score_uploaded=recorded and strategy.scores_uploaded,
                hooks=strategy.local_hooks(ctx, mask),
            )]  # fmt: skip
        else:
            if any(start is not on_device for start in starts):  # config.BATCHED_STRATEGIES keeps this out
                raise ValueError(f"runtime.clients_per_step > 1: strategy {strategy.name} starts clients from their own vectors")
            results = self.group_trainer.train(clients, indices, on_device, round_, record_importance=recorded, trained_groups=trained)
        updates = []
        for k, (ctx, result) in enumerate(zip(contexts, results)):
            scores = result.scores if result.scores is not None else measured[k]
            mask = strategy.upload_mask(ctx, scores, trained[k])
            updates.append(self._update(ctx, indices[k], result, mask, strategy.group_scores(scores)))
        return updates

    def _update(self, ctx: ClientContext, indices: np.ndarray, result: LocalResult, mask, scores) -> ClientUpdate:
        strategy, usage = self.strategy, result.usage
        sparsity = strategy.realised_sparsity(ctx, mask)
        return make_update(
            result.delta,
            self.groups.group_index,
            mask,
            scores,
            client=ctx.client,
            rank=self.rank,
            num_samples=int(indices.size),
            train_loss=result.train_loss,
            seconds=result.seconds,
            ops=self.ops_per_sample(sparsity, strategy.lora_rank(ctx)) * indices.size * self.num_epochs,
            sparsity=sparsity,
            paper_bytes=strategy.upload_bytes(self.upload_size, mask),
            peak_memory_bytes=usage.peak_memory_bytes,
            saved_activation_bytes=usage.saved_activation_bytes,
            device_seconds=usage.device_seconds,
            skipped_modules=result.skipped_modules,
            **dataclasses.asdict(strategy.client_budget(ctx)),
        )

    def train_clients(self, groups: list[list[int]], params: np.ndarray, round_: int, message: Any = None) -> list[ClientUpdate]:
        """Train this rank's step groups; the global vector crosses to the device once."""
        on_device = torch.from_numpy(params).to(self.trainer.device)
        return [u for group in groups for u in self.train_group(group, params, on_device, round_, message)]

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
