"""Several clients trained together on one device: one forward and backward over their stacked batches.

``GroupTrainer`` trains the G clients of one step group (``placement.assign_by_work``) at
once. The frozen backbone is shared; every trainable parameter (LoRA A and B, the task
head) becomes a stack of G copies, one per client, and each trainable ``nn.Linear`` applies
client g's copy to client g's rows of the concatenated batch (samples are always the first
dimension). Each client's loss is its own batch mean, and the step minimises their sum, so
client g's gradient is exactly the one it would get alone. AdamW runs on the stacks with
the torch formula; a client whose batches have run out is masked: no update, its optimizer
state untouched. Elements of groups a client does not train get no gradient and no weight
decay, as in ``LocalTrainer``, so their delta is exactly zero. The result is training the clients one after another, to float tolerance:
the concatenated batch is padded to its longest row, so reductions see a different layout.

Dropout is off: the model runs in eval mode (config: ``peft.lora.dropout`` must be 0), because a
dropout draw over the concatenated batch cannot reproduce each client's own draw.
Importance (Eq. 6) is recorded per client: the recorder sends each client's rows to its row.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmpi import seeding
from fedmpi.client import LocalResult, LocalTrainer
from fedmpi.data import collate
from fedmpi.measure import ClientRoundMeter

ADAM_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which LocalTrainer uses
ADAM_EPS = 1e-8


def client_batches(indices: np.ndarray, batch_size: int, num_epochs: int, rng: np.random.Generator) -> list[tuple[np.ndarray, bool]]:
    """A client's batches over all its epochs, as ``LocalTrainer`` draws them: (examples, last epoch?)."""
    out = []
    for epoch in range(num_epochs):
        order = rng.permutation(indices)
        last = epoch == num_epochs - 1
        out.extend((order[s : s + batch_size], last) for s in range(0, order.size, batch_size))
    return out


def adamw_step(params: torch.Tensor, grads: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
               *, step: int, lr: float, weight_decay: float, decay_mask: torch.Tensor | None = None) -> None:
    """torch.optim.AdamW's update (single-tensor form), in place, on (rows, ...) stacks;
    ``decay_mask`` (0/1, broadcastable) limits the decoupled weight decay to where it is 1."""
    beta1, beta2 = ADAM_BETAS
    if weight_decay:
        params.mul_(1 - lr * weight_decay if decay_mask is None else 1 - lr * weight_decay * decay_mask)
    exp_avg.lerp_(grads, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grads, grads, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(ADAM_EPS)
    params.addcdiv_(exp_avg, denom, value=-step_size)


class _Stacks:
    """Per-client copies of every trainable parameter, with their AdamW moments."""

    def __init__(self, trainer: LocalTrainer, global_params: torch.Tensor, num_clients: int) -> None:
        layout = trainer.bundle.layout
        self.offsets = layout.offsets.tolist()
        pieces = global_params.split(np.diff(layout.offsets).tolist())
        self.params = [
            piece.view(shape).unsqueeze(0).repeat(num_clients, *([1] * len(shape))).requires_grad_()
            for piece, shape in zip(pieces, layout.shapes)
        ]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.masks: list[torch.Tensor | None] = [None] * len(self.params)  # (rows, ...) 0/1: trained elements

    def set_trained(self, element_masks: list[np.ndarray | None], device: torch.device) -> None:
        """Per client, a bool per flat element (None: all train); stacks the per-parameter masks."""
        if all(m is None for m in element_masks):
            return
        offsets = self.offsets
        for i, p in enumerate(self.params):
            rows = [np.ones(p.shape[1:], bool) if m is None else m[offsets[i] : offsets[i + 1]].reshape(p.shape[1:])
                    for m in element_masks]  # fmt: skip
            if not all(r.all() for r in rows):
                self.masks[i] = torch.from_numpy(np.stack(rows)).to(device, p.dtype)

    def step(self, rows: list[int], num_clients: int, *, step: int, lr: float, weight_decay: float) -> None:
        """AdamW on the clients ``rows`` (all of them share the step count: they started together)."""
        with torch.no_grad():
            for p, mask in zip(self.params, self.masks):
                if mask is not None:
                    p.grad.mul_(mask)
            if len(rows) == num_clients:
                for p, m, v, mask in zip(self.params, self.exp_avg, self.exp_avg_sq, self.masks):
                    adamw_step(p, p.grad, m, v, step=step, lr=lr, weight_decay=weight_decay, decay_mask=mask)
                return
            index = torch.tensor(rows, device=self.params[0].device)
            for p, m, v, mask in zip(self.params, self.exp_avg, self.exp_avg_sq, self.masks):
                sub = [t.index_select(0, index) for t in (p, p.grad, m, v)]
                sub_mask = None if mask is None else mask.index_select(0, index)
                adamw_step(*sub, step=step, lr=lr, weight_decay=weight_decay, decay_mask=sub_mask)
                for t, new in zip((p, m, v), (sub[0], sub[2], sub[3])):
                    t.index_copy_(0, index, new)

    def flat(self, row: int) -> torch.Tensor:
        return torch.cat([p[row].detach().reshape(-1) for p in self.params])


class _RowLinear:
    """The forward of a trainable ``nn.Linear`` that uses client g's stacked weights on its rows."""

    def __init__(self, module: nn.Linear, weight: torch.Tensor | None, bias: torch.Tensor | None, plan: list) -> None:
        self.module, self.weight, self.bias, self.plan = module, weight, bias, plan

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for part, (row, _) in zip(x.split([n for _, n in self.plan], dim=0), self.plan):
            weight = self.module.weight if self.weight is None else self.weight[row]
            bias = self.module.bias if self.bias is None else self.bias[row]
            outs.append(F.linear(part, weight, bias))
        return torch.cat(outs, dim=0)


def _linear_owners(model: nn.Module, names: tuple[str, ...]) -> dict[str, tuple[nn.Linear, str]]:
    """Trainable parameter name -> (the nn.Linear owning it, "weight" or "bias")."""
    modules = dict(model.named_modules())
    owners = {}
    for name in names:
        module_name, _, attr = name.rpartition(".")
        module = modules.get(module_name)
        if not isinstance(module, nn.Linear) or attr not in ("weight", "bias"):
            raise ValueError(
                f"runtime.clients_per_step > 1 needs every trainable parameter to be an nn.Linear weight or bias; "
                f"{name!r} is not (use runtime.clients_per_step=1)"
            )
        owners[name] = (module, attr)
    return owners


class GroupTrainer:
    """Trains a group of clients together with ``LocalTrainer``'s model, data and settings."""

    def __init__(self, trainer: LocalTrainer) -> None:
        self.trainer = trainer
        layout = trainer.bundle.layout
        owners = _linear_owners(trainer.model, layout.names)
        self._linears: dict[nn.Linear, dict[str, int]] = {}
        for i, name in enumerate(layout.names):
            module, attr = owners[name]
            self._linears.setdefault(module, {})[attr] = i

    @contextmanager
    def _row_linears(self, stacks: _Stacks, plan: list) -> Iterator[None]:
        for module, attrs in self._linears.items():
            weight = stacks.params[attrs["weight"]] if "weight" in attrs else None
            bias = stacks.params[attrs["bias"]] if "bias" in attrs else None
            module.forward = _RowLinear(module, weight, bias, plan)  # an instance attribute shadows the method
        try:
            yield
        finally:
            for module in self._linears:
                del module.forward

    def _client_losses(self, logits: torch.Tensor, labels: torch.Tensor, plan: list) -> list[torch.Tensor]:
        """Each client's batch-mean loss, as the model computes it for a batch of its own."""
        logits = logits.float()
        losses = []
        for lg, lb in zip(logits.split([n for _, n in plan]), labels.split([n for _, n in plan])):
            if self.trainer.train_split.kind == "classification":
                losses.append(F.cross_entropy(lg, lb))
            else:
                losses.append(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100))
        return losses

    def train(
        self,
        clients: list[int],
        indices: list[np.ndarray],
        global_params: torch.Tensor,
        round_: int,
        *,
        record_importance: bool,
        trained_groups: list[np.ndarray | None] | None = None,
    ) -> list[LocalResult]:
        """Train ``clients`` (with example ``indices``) together from the global vector on the device."""
        t, start = self.trainer, time.perf_counter()
        global_params = torch.as_tensor(global_params, device=t.device)
        num = len(clients)
        cfg, model, device = t.cfg, t.model, t.device
        streams = [
            client_batches(idx, cfg.batch_size, cfg.num_epochs, seeding.rng(t.seed, seeding.SHUFFLE, round_, c))
            for c, idx in zip(clients, indices)
        ]
        stacks = _Stacks(t, global_params, num)
        trained = trained_groups or [None] * num
        stacks.set_trained([None if g is None else t.groups.element_mask(g) for g in trained], device)
        t.bundle.layout.set_flat(model, global_params)
        if record_importance:
            t.confidence.reset(num_rows=num + 1)  # row num: batches of earlier epochs, not scored
        loss_sums = torch.zeros(num, dtype=torch.float64, device=device)
        seen = np.zeros(num, dtype=np.int64)
        model.eval()  # dropout off
        with ClientRoundMeter(model, device, extra_parameters=tuple(stacks.params)) as meter:
            self._steps(streams, stacks, loss_sums, seen, record_importance)
        model.train()
        scores = t.confidence.row_scores() if record_importance else None
        deltas = [(stacks.flat(g) - global_params).cpu().numpy() for g in range(num)]
        train_losses = loss_sums.cpu().numpy() / np.maximum(seen, 1)
        seconds = time.perf_counter() - start
        # The shared step's time is split by samples; its peak memory and saved activations are the step's.
        share = np.array([idx.size for idx in indices], dtype=np.float64) / sum(idx.size for idx in indices)
        return [
            LocalResult(deltas[g], float(train_losses[g]), seconds * share[g], None if scores is None else scores[g],
                        dataclasses.replace(meter.usage, seconds=meter.usage.seconds * share[g],
                                            device_seconds=meter.usage.device_seconds * share[g]))
            for g in range(num)
        ]  # fmt: skip

    def _steps(self, streams: list, stacks: _Stacks, loss_sums: torch.Tensor, seen: np.ndarray, record_importance: bool) -> None:
        """Every step of the group's clients: one forward and backward over their stacked batches."""
        t = self.trainer
        cfg, model, device, num = t.cfg, t.model, t.device, len(streams)
        for step in range(max(len(s) for s in streams)):
            rows = [g for g in range(num) if step < len(streams[g])]
            batch_ids = [streams[g][step][0] for g in rows]
            plan = [(g, len(b)) for g, b in zip(rows, batch_ids)]
            batch = collate(t.train_split, np.concatenate(batch_ids), pad_token_id=t.bundle.pad_token_id)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            segments = [(g if streams[g][step][1] else num, n) for g, n in plan]
            recording = t.confidence.recording(batch, segments) if record_importance else _nothing()
            with recording, self._row_linears(stacks, plan), t.autocast():
                logits = model(**batch).logits
            losses = self._client_losses(logits, batch["labels"], plan)
            torch.stack(losses).sum().backward()
            stacks.step(rows, num, step=step + 1, lr=cfg.lr, weight_decay=cfg.weight_decay)
            for p in stacks.params:
                p.grad = None
            with torch.no_grad():
                for (g, n), loss in zip(plan, losses):
                    if streams[g][step][1]:  # the last epoch's mean loss, as LocalTrainer reports
                        loss_sums[g] += loss.detach().double() * n
                        seen[g] += n


@contextmanager
def _nothing() -> Iterator[None]:
    yield
