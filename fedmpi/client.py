"""Local training of one logical client on the rank's single model instance.

The trainer loads the global trainable vector into the model, runs the client's local
epochs with a fresh optimizer, and returns the delta, the mean loss of its last epoch
and, when asked, its head importance: gathered during the last epoch's training forward
passes (``score_on=training``), or from an eval-mode pass over the client's data on the
model it uploads (``score_on=uploaded``). Untrained heads can also be removed from the
forward and backward (``pruned_heads=removed``, ``fedmpi/models/head_subset.py``). Every
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
from fedmpi.measure import ClientRoundMeter, Usage
from fedmpi.models.groups import GroupMap
from fedmpi.strategies.base import LocalHooks
from fedmpi.models.head_subset import heads_removed


@dataclass(frozen=True)
class LocalResult:
    delta: np.ndarray  # float32, trained minus global trainable vector
    train_loss: float  # sample-weighted mean loss of the last local epoch
    seconds: float
    scores: np.ndarray | None  # head importance (Eq. 6), when recorded
    usage: Usage | None = None  # measured seconds, peak memory, saved activations and device seconds of the training
    skipped_modules: int = -1  # modules the strategy's hooks saw skipped in every forward (-1: they switch none off)


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
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self._bounds = list(zip(bundle.layout.offsets[:-1].tolist(), bundle.layout.offsets[1:].tolist()))

    def _collate(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        batch = collate(self.train_split, indices, pad_token_id=self.bundle.pad_token_id)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _batches(self, indices: np.ndarray, rng: np.random.Generator):
        order = rng.permutation(indices)
        for start in range(0, order.size, self.cfg.batch_size):
            yield self._collate(order[start : start + self.cfg.batch_size])

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

    def score(self, indices: np.ndarray) -> np.ndarray:
        """Head confidence of the model as it is now, in eval mode, on the client's data (forward only).

        Batches follow the client's index order, so the scores are the same on every rank.
        """
        assert self.confidence is not None
        self.confidence.reset()
        self.model.eval()
        with torch.no_grad():
            for start in range(0, indices.size, self.cfg.batch_size):
                batch = self._collate(indices[start : start + self.cfg.batch_size])
                with self.confidence.recording(batch), self.autocast():
                    self.model(**batch)
        self.model.train()
        return self.confidence.scores()

    def _proximal_term(self, params: list[torch.Tensor], anchors: list[torch.Tensor]) -> torch.Tensor:
        """FedProx: mu/2 ||w - w_global||^2 over the parameters that train (Li et al. 2020)."""
        squared = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors))
        return 0.5 * self.cfg.prox_mu * squared

    def measure_importance(self, indices: np.ndarray, global_params: np.ndarray | torch.Tensor) -> np.ndarray:
        """Head confidence of the received global model (masks chosen before training)."""
        self.bundle.layout.set_flat(self.model, torch.as_tensor(global_params))
        return self.score(indices)

    def train(
        self,
        indices: np.ndarray,
        global_params: np.ndarray | torch.Tensor,
        round_: int,
        client: int,
        *,
        record_importance: bool,
        trained_groups: np.ndarray | None = None,
        remove_untrained: bool = False,
        score_uploaded: bool = False,
        hooks: LocalHooks | None = None,
    ) -> LocalResult:
        """Train one client from the global vector (float32; a device tensor saves a copy); only
        ``trained_groups`` train (None: all).

        With ``remove_untrained`` the other groups (heads) are left out of the forward and
        backward. ``record_importance`` scores heads during the last epoch; ``score_uploaded``
        scores the trained model afterwards, in eval mode. ``hooks`` (the strategy's) wrap the local
        epochs and see every step after the masked backward.
        """
        hooks = hooks or LocalHooks()
        start = time.perf_counter()
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
        # mu = 0 adds no term at all, so FedProx at mu = 0 is FedAvg bit for bit.
        anchors = [p.detach().clone() for p in trained] if self.cfg.prox_mu > 0 else None
        if record_importance:
            assert self.confidence is not None
            self.confidence.reset()
        for p in frozen:
            p.requires_grad_(False)
        self.model.train(self.dropout)
        meter = ClientRoundMeter(self.model, self.device)
        removed = remove_untrained and trained_groups is not None
        subset = heads_removed(self.model, self.bundle.head_map, trained_groups) if removed else nullcontext()
        try:
            with hooks, meter, subset:
                for epoch in range(self.cfg.num_epochs):
                    last_epoch = epoch == self.cfg.num_epochs - 1
                    loss_sum, seen = torch.zeros((), dtype=torch.float64, device=self.device), 0
                    for batch in self._batches(indices, shuffle):
                        # Importance is measured in the last epoch only: Algorithm 1 scores the model the
                        # client uploads, and one epoch is the paper's setting.
                        recording = self.confidence.recording(batch) if record_importance and last_epoch else nullcontext()
                        with recording, self.autocast():
                            loss = self.model(**batch).loss
                        objective = loss if anchors is None else loss + self._proximal_term(trained, anchors)
                        objective.backward()
                        with torch.no_grad():
                            for param, mask in partial:
                                param.grad.mul_(mask)
                                if decay:
                                    param.mul_(1.0 - lr * decay * mask)
                        hooks.after_backward()
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        n = batch["input_ids"].shape[0]
                        loss_sum += loss.detach().double() * n  # no host sync per step
                        seen += n
        finally:
            for p in frozen:
                p.requires_grad_(True)
        delta = (layout.get_flat(self.model) - global_params).cpu().numpy()
        if score_uploaded:
            scores = self.score(indices)
        else:
            scores = self.confidence.scores() if record_importance else hooks.scores()
        train_loss = float(loss_sum) / max(seen, 1)
        return LocalResult(delta, train_loss, time.perf_counter() - start, scores, meter.usage, hooks.skipped_modules())
