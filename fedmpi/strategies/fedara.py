"""FedARA: adaptive rank allocation over SVD adapters (arXiv 2501.14406; platform.md section 3).

Groups are rank triplets (P's column i, lambda_i, Q's row i of one SVD module;
``fedmpi.models.svd_adapters``). Each round the server broadcasts the global triplet mask;
a client trains and uploads only the kept triplets, switches off modules left at rank 0
(no forward, no backward), and reports its triplets' smoothed sensitivity. The server
averages each kept triplet over the clients (|D_c| weights), averages the scores the same
way, and keeps the top b(t+1) triplets for the next round; a masked triplet is zeroed and
stays masked. Its state -- the mask, the averaged scores, the last budget -- is checkpointed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from fedmpi.config import FedAraConfig, LoraConfig
from fedmpi.aggregation import groupwise_mean
from fedmpi.models.build import ModelBundle
from fedmpi.models.groups import GroupMap
from fedmpi.models.svd_adapters import (
    AdapterCalls, TripletSensitivity, modules_pruned, triplet_groups, zero_rank_modules,
)
from fedmpi.payload import ClientUpdate, densify
from fedmpi.peft_methods.svd import SvdAdapters
from fedmpi.rank_allocation import check_schedule, default_phases, rank_budget, top_triplets, weighted_scores
from fedmpi.strategies.base import ClientContext, LocalHooks, RunInfo, Strategy


@dataclass(frozen=True)
class RankSchedule:
    """b(t): ``initial`` (modules x r0) for t_i rounds, cubic fall to ``final``, flat for t_f rounds."""

    num_rounds: int
    initial: int
    final: int
    warmup_rounds: int
    final_rounds: int

    def __post_init__(self) -> None:
        check_schedule(self.num_rounds, self.warmup_rounds, self.final_rounds)
        if not 0 <= self.final <= self.initial:
            raise ValueError(f"the final rank budget ({self.final}) must lie in [0, {self.initial}]")

    @classmethod
    def from_settings(
        cls, num_rounds: int, num_modules: int, initial_rank: int, target_rank: float,
        warmup_rounds: int | None, final_rounds: int | None,
    ) -> RankSchedule:  # fmt: skip
        default_warmup, default_final = default_phases(num_rounds)
        return cls(
            num_rounds=num_rounds,
            initial=num_modules * initial_rank,
            final=int(round(num_modules * target_rank)),
            warmup_rounds=default_warmup if warmup_rounds is None else warmup_rounds,
            final_rounds=default_final if final_rounds is None else final_rounds,
        )

    def budget(self, round_: int) -> int:
        # Past the planned rounds (a run extended on resume) the budget stays at b_T.
        return rank_budget(
            min(round_, self.num_rounds), num_rounds=self.num_rounds, initial=self.initial, final=self.final,
            warmup_rounds=self.warmup_rounds, final_rounds=self.final_rounds,
        )  # fmt: skip


@dataclass
class RankAllocationServer:
    """The server's side of FedARA: mask for the next round, aggregation, checkpointable state."""

    groups: GroupMap
    schedule: RankSchedule
    mask: np.ndarray = field(init=False)  # bool per triplet: trained and sent this round
    importance: np.ndarray = field(init=False)  # float64 per triplet: last |D_c|-weighted mean score
    budget: int = field(init=False)

    def __post_init__(self) -> None:
        if self.groups.num_groups != self.schedule.initial:
            raise ValueError(
                f"rank schedule starts at {self.schedule.initial} triplets, the model has {self.groups.num_groups}"
            )
        self.mask = np.ones(self.groups.num_groups, dtype=bool)
        self.importance = np.zeros(self.groups.num_groups, dtype=np.float64)
        self.budget = self.schedule.initial

    def round_message(self, round_: int, selected: np.ndarray | None = None) -> np.ndarray:
        """The triplet mask clients of ``round_`` train and upload under."""
        return self.mask.copy()

    def aggregate(
        self, params: np.ndarray, deltas: list[np.ndarray], num_samples: np.ndarray, scores: np.ndarray,
        round_: int, server_lr: float,
    ) -> np.ndarray:  # fmt: skip
        """Average the kept triplets, then allocate the next round's budget; masked triplets are zeroed."""
        masks = np.broadcast_to(self.mask, (len(deltas), self.mask.size))
        new = groupwise_mean(params, deltas, num_samples, masks, self.groups.group_index, server_lr)
        self.importance = np.where(self.mask, weighted_scores(scores, num_samples), 0.0)
        self.budget = self.schedule.budget(round_ + 1)
        self.mask = top_triplets(self.importance, self.budget, self.mask)
        new[~self.groups.element_mask(self.mask)] = 0.0  # a pruned triplet contributes nothing from now on
        return new

    def state(self) -> dict[str, np.ndarray]:
        return {
            "triplet_mask": self.mask.astype(np.uint8),
            "triplet_importance": self.importance.copy(),
            "rank_budget": np.array([self.budget], dtype=np.int64),
        }

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        mask = np.asarray(state["triplet_mask"]).astype(bool)
        if mask.shape != self.mask.shape:
            raise ValueError(f"checkpoint's triplet mask has {mask.size} triplets, the model {self.mask.size}")
        self.mask = mask
        self.importance = np.asarray(state["triplet_importance"], dtype=np.float64).copy()
        self.budget = int(np.asarray(state["rank_budget"])[0])


class TripletTraining(LocalHooks):
    """A FedARA client's local training: rank-0 modules switched off, triplet sensitivity tracked,
    and the modules whose adapter branch never ran counted (``skipped_modules``, recorded per client-round)."""

    def __init__(self, model: nn.Module, groups: GroupMap, trained: np.ndarray | None, beta1: float, beta2: float) -> None:
        self.model = model
        self.pruned = [] if trained is None else zero_rank_modules(groups, trained)
        self.sensitivity = TripletSensitivity(model, beta1, beta2)
        self.calls = AdapterCalls(model)

    def __enter__(self) -> TripletTraining:
        self._pruning = modules_pruned(self.model, self.pruned)
        self._pruning.__enter__()
        self.calls.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls.__exit__(*exc)
        self._pruning.__exit__(*exc)

    def skipped_modules(self) -> int:
        return len(self.calls.never_ran())

    def after_backward(self) -> None:
        self.sensitivity.update()

    def scores(self) -> np.ndarray:
        return self.sensitivity.scores()


class FedAra(Strategy):
    name = "fedara"
    paper_ops = False
    importance = "triplet_sensitivity"
    cfg: FedAraConfig

    @classmethod
    def peft_method(cls, cfg: FedAraConfig, lora: LoraConfig) -> SvdAdapters:
        return SvdAdapters(
            initial_rank=cfg.initial_rank, alpha=lora.alpha, dropout=lora.dropout,
            orth_reg_weight=cfg.orth_reg_weight, target_modules=lora.target_modules,
        )  # fmt: skip

    @classmethod
    def group_map(cls, bundle: ModelBundle) -> GroupMap:
        return triplet_groups(bundle.model, bundle.layout)

    def __init__(self, cfg: FedAraConfig, groups: GroupMap, run: RunInfo | None = None) -> None:
        if run is None:
            raise ValueError("strategy.name=fedara needs the run's shape (number of rounds, model)")
        super().__init__(cfg, groups, run)
        schedule = RankSchedule.from_settings(
            run.num_rounds, len(groups.families), cfg.initial_rank, cfg.target_rank, cfg.warmup_rounds, cfg.final_rounds
        )
        self.allocation = RankAllocationServer(groups, schedule)
        self._round = 0

    # client side
    def train_mask(self, ctx: ClientContext, score: Callable[[], np.ndarray]) -> np.ndarray | None:
        return None if ctx.message is None else np.asarray(ctx.message, dtype=bool)

    def local_hooks(self, ctx: ClientContext, trained: np.ndarray | None) -> LocalHooks:
        return TripletTraining(self.run.model, self.groups, trained, self.cfg.beta1, self.cfg.beta2)

    # server side
    def round_message(self, round_: int, selected: np.ndarray) -> np.ndarray:
        self._round = round_  # the round aggregate() closes: the next budget is b(round_ + 1)
        return self.allocation.round_message(round_)

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        index = self.groups.group_index
        deltas = [densify(u, index) for u in updates]
        scores = np.stack([u.scores for u in updates])
        num_samples = np.array([u.num_samples for u in updates])
        return self.allocation.aggregate(params, deltas, num_samples, scores, self._round, server_lr)

    def state(self) -> dict[str, np.ndarray]:
        return self.allocation.state()

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.allocation.load_state(state)
