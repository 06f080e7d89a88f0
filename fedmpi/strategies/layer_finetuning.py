"""Layer finetuning under device budgets (arXiv 2411.07826; `../shared/notes/platform.md` section 2).

Groups are the model's transformer blocks. A client trains the last n_c blocks plus the task
head, n_c the largest that fits its device class's memory, FLOPs and upload budgets
(``fedmpi.budgets``), and uploads exactly what it trained. Frozen blocks get no gradient;
their parameters are frozen, and since the embeddings are frozen too nothing before the first
trained block requires grad, so autograd keeps no activations there and runs no backward
(measured by ``benchmarks/layer_finetuning.py``). The server averages each block over the
clients that trained it, weighted by |D_c|; a block no client trained keeps its value; the
task head (no group) is FedAvg'd over everyone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedmpi.aggregation import groupwise_mean
from fedmpi.budgets import BudgetError, LayerPlan, ModelSizes, TrainingShape, trainable_blocks
from fedmpi.config import LayerFinetuningConfig
from fedmpi.devices import DeviceClass
from fedmpi.models.blocks import block_groups, model_sizes
from fedmpi.models.build import ModelBundle
from fedmpi.models.groups import GroupMap
from fedmpi.payload import ClientUpdate, densify
from fedmpi.peft_methods.base import PeftMethod
from fedmpi.peft_methods.blocks import FullBlocks
from fedmpi.strategies.base import ClientBudget, ClientContext, RunInfo, Strategy

UNLIMITED = DeviceClass(name="unlimited")


def last_blocks_mask(num_blocks_total: int, num_trained: int) -> np.ndarray:
    """Bool per block: True for the last ``num_trained``."""
    mask = np.zeros(num_blocks_total, dtype=bool)
    mask[num_blocks_total - num_trained :] = True
    return mask


@dataclass(frozen=True)
class BlockBudgets:
    """Per client, the plan its device class allows: n_c and the analytic costs it planned with."""

    sizes: ModelSizes
    shape: TrainingShape
    classes: tuple[DeviceClass, ...]  # empty: every client unlimited
    client_class: np.ndarray | None  # class index per client (None: unlimited)
    num_epochs: int

    def device_of(self, client: int) -> DeviceClass:
        return UNLIMITED if self.client_class is None else self.classes[int(self.client_class[client])]

    def plan_for(self, client: int, num_samples: int) -> LayerPlan:
        return trainable_blocks(self.sizes, self.shape, self.device_of(client), num_samples * self.num_epochs)

    def check_every_class(self, reference_samples: int) -> dict[str, int]:
        """n per class at ``reference_samples`` samples (raises ``BudgetError`` naming a class that cannot run)."""
        classes = self.classes or (UNLIMITED,)
        return {
            d.name: trainable_blocks(self.sizes, self.shape, d, reference_samples * self.num_epochs).num_blocks
            for d in classes
        }

    def check_every_client(self, client_samples: np.ndarray) -> None:
        """Raise ``BudgetError`` before round 1 if a client's class cannot train its own data's round.

        FLOPs grow with the samples a client trains per round, so a budget that fits one batch
        can still be too small for a data-rich client of a skewed partition; without this check
        the run would fail only in the first round that selects it.
        """
        for client in np.argsort(-np.asarray(client_samples), kind="stable"):
            try:
                self.plan_for(int(client), int(client_samples[client]))
            except BudgetError as exc:
                raise BudgetError(
                    f"client {client} ({client_samples[client]} training examples, "
                    f"{client_samples[client] * self.num_epochs} samples per round): {exc}; raise the class's "
                    "budget, or spread the data over more clients (data.num_clients, data.partition)"
                ) from None

    def train_mask(self, client: int, num_samples: int) -> np.ndarray:
        return last_blocks_mask(self.sizes.num_blocks, self.plan_for(client, num_samples).num_blocks)


class LayerFinetuning(Strategy):
    name = "layer_finetuning"
    paper_ops = False  # fedmpi.budgets plans its costs; fedmpi.measure measures them
    cfg: LayerFinetuningConfig

    @classmethod
    def peft_method(cls, cfg: LayerFinetuningConfig, lora: object) -> PeftMethod | None:
        return FullBlocks() if cfg.variant == "blocks" else None  # "lora": the run's LoRA, grouped by block

    @classmethod
    def group_map(cls, bundle: ModelBundle) -> GroupMap:
        return block_groups(bundle.model, bundle.layout)

    def __init__(self, cfg: LayerFinetuningConfig, groups: GroupMap, run: RunInfo | None = None) -> None:
        if run is None:
            raise ValueError("strategy.name=layer_finetuning needs the run's shape (devices, batch size, model)")
        super().__init__(cfg, groups, run)
        sizes = model_sizes(run.model, list(run.task_head), run.model.config)
        classes = run.devices.classes
        self.budgets = BlockBudgets(
            sizes=sizes,
            shape=TrainingShape(run.batch_size, run.max_length, cfg.dtype_bytes),
            classes=tuple(classes),
            client_class=self.device_class,
            num_epochs=run.num_epochs,
        )
        # Fail at start, naming the class, if a device cannot train even the head on one batch.
        self.blocks_per_class = self.budgets.check_every_class(run.batch_size)
        if run.client_samples is not None:
            self.budgets.check_every_client(run.client_samples)

    def train_mask(self, ctx: ClientContext, score: Callable[[], np.ndarray]) -> np.ndarray | None:
        return self.budgets.train_mask(ctx.client, ctx.num_samples)

    def client_budget(self, ctx: ClientContext) -> ClientBudget:
        p = self.budgets.plan_for(ctx.client, ctx.num_samples)
        cls = -1 if self.budgets.client_class is None else int(self.budgets.client_class[ctx.client])
        return ClientBudget(cls, p.memory_bytes, p.flops, p.upload_bytes)

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        index = self.groups.group_index
        masks = np.stack([
            u.group_mask if u.group_mask is not None else np.ones(self.groups.num_groups, bool) for u in updates
        ])  # fmt: skip
        deltas = [densify(u, index) for u in updates]
        return groupwise_mean(params, deltas, np.array([u.num_samples for u in updates]), masks, index, server_lr)
