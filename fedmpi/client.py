"""Local training of one logical client on the rank's single model instance.

The trainer loads the global trainable vector into the model, runs the client's local
epochs with a fresh optimizer, and returns the delta, the mean loss of its last epoch
and, when asked, its head importance gathered during the training forward passes. Every
random draw (batch order, dropout) is keyed by (seed, round, client), so a client trains
the same way on whichever rank hosts it. The global vector arrives on the device, the loss
is summed on the device, and the host waits once per client, for the delta.

Groups the strategy does not train are not trained at all: a parameter whose elements
all belong to such groups is frozen for the client (no gradient, no backward through it,
not in the optimizer), and a parameter only partly in them has those elements' gradient
zeroed and its decoupled weight decay masked, so their delta is exactly zero.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from fedmpi import runtime, seeding
from fedmpi.config import ClientConfig
from fedmpi.data import TokenizedSplit, collate
from fedmpi.models import HeadConfidence, ModelBundle
from fedmpi.models.groups import GroupMap


@dataclass(frozen=True)
class LocalResult:
    delta: np.ndarray  # float32, trained minus global trainable vector
    train_loss: float  # sample-weighted mean loss of the last local epoch
    seconds: float
    scores: np.ndarray | None  # head importance (Eq. 6), when recorded
    device_seconds: float = float("nan")  # see runtime.DeviceMeter
    peak_memory: float = float("nan")  # peak device bytes (NaN on the CPU)


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
        groups: GroupMap,
        precision: str = "fp32",
        dropout: bool = True,
    ) -> None:
        self.bundle = bundle
        self.model = bundle.model
        self.train_split = train
        self.cfg = cfg
        self.device = device
        self.seed = seed
        self.confidence = confidence
        self.groups = groups
        self.precision = precision
        self.dropout = dropout  # False: train in eval mode, no dropout anywhere (as batched.py trains)
        self._meter = runtime.DeviceMeter(device)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self._bounds = list(zip(bundle.layout.offsets[:-1].tolist(), bundle.layout.offsets[1:].tolist()))

    def _batches(self, indices: np.ndarray, rng: np.random.Generator):
        order = rng.permutation(indices)
        for start in range(0, order.size, self.cfg.batch_size):
            batch = collate(self.train_split, order[start : start + self.cfg.batch_size], pad_token_id=self.bundle.pad_token_id)
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _split(self, trained_groups: np.ndarray | None) -> tuple[list, list, list]:
        """(trained, frozen, [(partly trained parameter, 0/1 element mask)]) for a group mask."""
        if trained_groups is None:
            return self._params, [], []
        elements = self.groups.element_mask(trained_groups)
        trained, frozen, partial = [], [], []
        for p, (a, b) in zip(self._params, self._bounds):
            mask = elements[a:b]
            if mask.all():
                trained.append(p)
            elif not mask.any():
                frozen.append(p)
            else:
                trained.append(p)
                partial.append((p, torch.from_numpy(mask.reshape(p.shape)).to(self.device, p.dtype)))
        return trained, frozen, partial

    def autocast(self):
        return runtime.autocast(self.device, self.precision)

    def measure_importance(self, indices: np.ndarray, global_params: torch.Tensor, round_: int, client: int) -> np.ndarray:
        """Head confidence of the received global model on the client's data (forward only)."""
        assert self.confidence is not None
        self.bundle.layout.set_flat(self.model, global_params)
        self.confidence.reset()
        self.model.eval()
        with torch.no_grad():
            for batch in self._batches(indices, seeding.rng(self.seed, seeding.SHUFFLE, round_, client)):
                with self.confidence.recording(batch), self.autocast():
                    self.model(**batch)
        self.model.train()
        return self.confidence.scores()

    def train(
        self,
        indices: np.ndarray,
        global_params: torch.Tensor,
        round_: int,
        client: int,
        *,
        record_importance: bool,
        trained_groups: np.ndarray | None = None,
    ) -> LocalResult:
        """Train one client from the global vector (float32, on the device); only
        ``trained_groups`` train (None: all)."""
        start = time.perf_counter()
        self._meter.start()
        global_params = torch.as_tensor(global_params, device=self.device)  # a no-op for a device tensor
        layout = self.bundle.layout
        layout.set_flat(self.model, global_params)
        torch.manual_seed(seeding.torch_seed(self.seed, seeding.DROPOUT, round_, client))
        shuffle = seeding.rng(self.seed, seeding.SHUFFLE, round_, client)
        trained, frozen, partial = self._split(trained_groups)
        partly = {id(p) for p, _ in partial}
        lr, decay = self.cfg.lr, self.cfg.weight_decay
        # AdamW's decoupled decay (p *= 1 - lr * wd, before the Adam step) is applied by hand
        # to partly trained parameters, masked, so elements that do not train stay put.
        optimizer = torch.optim.AdamW(
            [{"params": [p for p in trained if id(p) not in partly], "weight_decay": decay},
             {"params": [p for p, _ in partial], "weight_decay": 0.0}], lr=lr,
        )  # fmt: skip
        if record_importance:
            assert self.confidence is not None
            self.confidence.reset()
        for p in frozen:
            p.requires_grad_(False)
        self.model.train(self.dropout)
        try:
            for epoch in range(self.cfg.num_epochs):
                last_epoch = epoch == self.cfg.num_epochs - 1
                loss_sum, seen = torch.zeros((), dtype=torch.float64, device=self.device), 0
                for batch in self._batches(indices, shuffle):
                    # Importance is measured in the last epoch only: Algorithm 1 scores the model the
                    # client uploads, and one epoch is the paper's setting.
                    recording = self.confidence.recording(batch) if record_importance and last_epoch else nullcontext()
                    with recording, self.autocast():
                        loss = self.model(**batch).loss
                    loss.backward()
                    with torch.no_grad():
                        for param, mask in partial:
                            param.grad.mul_(mask)
                            if decay:
                                param.mul_(1.0 - lr * decay * mask)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    n = batch["input_ids"].shape[0]
                    loss_sum += loss.detach().double() * n  # no host sync per step
                    seen += n
        finally:
            for p in frozen:
                p.requires_grad_(True)
        delta = (layout.get_flat(self.model) - global_params).cpu().numpy()
        scores = self.confidence.scores() if record_importance else None
        train_loss = float(loss_sum) / max(seen, 1)
        device_seconds, peak_memory = self._meter.stop()
        return LocalResult(delta, train_loss, time.perf_counter() - start, scores, device_seconds, peak_memory)
