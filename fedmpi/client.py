"""Local training of one logical client on the rank's single model instance.

The trainer loads the global trainable vector into the model, runs the client's local
epochs with a fresh optimizer, and returns the delta, the mean loss of its last epoch
and, when asked, its head importance gathered during the training forward passes. Every
random draw (batch order, dropout) is keyed by (seed, round, client), so a client trains
the same way on whichever rank hosts it.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from fedmpi import seeding
from fedmpi.config import ClientConfig
from fedmpi.data import TokenizedSplit, collate
from fedmpi.models import HeadConfidence, ModelBundle


@dataclass(frozen=True)
class LocalResult:
    delta: np.ndarray  # float32, trained minus global trainable vector
    train_loss: float  # sample-weighted mean loss of the last local epoch
    seconds: float
    scores: np.ndarray | None  # head importance (Eq. 6), when recorded


class LocalTrainer:
    def __init__(
        self,
        bundle: ModelBundle,
        train: TokenizedSplit,
        cfg: ClientConfig,
        *,
        device: torch.device,
        seed: int,
        confidence: HeadConfidence | None,
    ) -> None:
        self.bundle = bundle
        self.model = bundle.model
        self.train_split = train
        self.cfg = cfg
        self.device = device
        self.seed = seed
        self.confidence = confidence
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        # Per parameter, the slice of the flat head index it covers (for freezing heads).
        index = bundle.head_map.head_index
        offsets = bundle.layout.offsets
        self._param_heads = [
            torch.from_numpy(index[offsets[i] : offsets[i + 1]].reshape(p.shape)).to(device)
            if (index[offsets[i] : offsets[i + 1]] >= 0).any()
            else None
            for i, p in enumerate(self._params)
        ]

    def _batches(self, indices: np.ndarray, rng: np.random.Generator):
        order = rng.permutation(indices)
        for start in range(0, order.size, self.cfg.batch_size):
            batch = collate(self.train_split, order[start : start + self.cfg.batch_size], pad_token_id=self.bundle.pad_token_id)
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _grad_masks(self, kept_heads: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, 0/1 mask) for every parameter holding head elements; pruned heads get 0."""
        kept = torch.from_numpy(np.append(kept_heads, True)).to(self.device)  # index -1 -> True
        return [
            (p, kept[heads].to(p.dtype)) for p, heads in zip(self._params, self._param_heads) if heads is not None
        ]

    def measure_importance(self, indices: np.ndarray, global_params: np.ndarray, round_: int, client: int) -> np.ndarray:
        """Head confidence of the received global model on the client's data (forward only)."""
        assert self.confidence is not None
        self.bundle.layout.set_flat(self.model, torch.from_numpy(global_params))
        self.confidence.reset()
        self.model.eval()
        with torch.no_grad():
            for batch in self._batches(indices, seeding.rng(self.seed, seeding.SHUFFLE, round_, client)):
                with self.confidence.recording(batch):
                    self.model(**batch)
        self.model.train()
        return self.confidence.scores()

    def train(
        self,
        indices: np.ndarray,
        global_params: np.ndarray,
        round_: int,
        client: int,
        *,
        record_importance: bool,
        kept_heads: np.ndarray | None = None,
    ) -> LocalResult:
        """Train one client from the global vector; ``kept_heads`` freezes the other heads' B rows."""
        start = time.perf_counter()
        layout = self.bundle.layout
        layout.set_flat(self.model, torch.from_numpy(global_params))
        torch.manual_seed(seeding.torch_seed(self.seed, seeding.DROPOUT, round_, client))
        shuffle = seeding.rng(self.seed, seeding.SHUFFLE, round_, client)
        optimizer = torch.optim.AdamW(self._params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        grad_masks = self._grad_masks(kept_heads) if kept_heads is not None else []
        if record_importance:
            assert self.confidence is not None
            self.confidence.reset()
        self.model.train()
        for epoch in range(self.cfg.num_epochs):
            last_epoch = epoch == self.cfg.num_epochs - 1
            loss_sum, seen = 0.0, 0
            for batch in self._batches(indices, shuffle):
                # Importance is measured in the last epoch only: Algorithm 1 scores the model the
                # client uploads, and one epoch is the paper's setting.
                recording = self.confidence.recording(batch) if record_importance and last_epoch else nullcontext()
                with recording:
                    loss = self.model(**batch).loss
                loss.backward()
                for param, mask in grad_masks:
                    param.grad.mul_(mask)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                n = batch["input_ids"].shape[0]
                loss_sum += float(loss.detach()) * n
                seen += n
        delta = layout.get_flat(self.model).cpu().numpy() - global_params
        scores = self.confidence.scores() if record_importance else None
        return LocalResult(delta, loss_sum / max(seen, 1), time.perf_counter() - start, scores)
