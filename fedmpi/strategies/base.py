"""The skeleton every federated strategy shares: client-side hooks, server-side combination, state.

A strategy is built on every rank from its own config section and the run's parameter
groups (``GroupMap``). On the clients it decides which groups train (before training)
and which are uploaded (after), given the client's context; on the server (rank 0) it
combines the round's updates, may broadcast a message with each round's selection, and
may keep state, which is checkpointed every round and restored bit-exactly on resume.
The round loop calls only these methods; a new strategy is one file and one registry line.
Client-side hooks see only the context and the server's message, never server state, so
a client trains the same way on whichever rank hosts it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import nn

from fedmpi.devices import client_classes
from fedmpi.models.groups import GroupMap
from fedmpi.payload import ClientUpdate, realised_sparsity


@dataclass(frozen=True)
class ClientContext:
    """What a strategy knows about the client it is deciding for."""

    client: int
    round: int
    num_samples: int
    rng: np.random.Generator  # keyed by (seed, round, client): the strategy's own random draws
    message: Any = None  # what the server broadcast this round (Strategy.round_message)


@dataclass(frozen=True)
class RunInfo:
    """The run's shape and this rank's model, for strategies that plan with them (budgets, schedules)."""

    seed: int
    num_rounds: int
    num_clients: int
    batch_size: int
    num_epochs: int
    max_length: int
    devices: Any  # fedmpi.devices.DevicesConfig
    model: nn.Module  # this rank's model instance (client-side hooks act on it)
    task_head: tuple[str, ...]  # the task head's module names
    client_samples: np.ndarray | None = None  # training examples per client (the partition); None: not known


@dataclass(frozen=True)
class ClientBudget:
    """What a client-round was allowed and what its strategy planned to use (NaN: no such figure)."""

    device_class: int = -1  # index into devices.classes; -1: none
    planned_memory_bytes: float = math.nan
    planned_flops: float = math.nan
    planned_upload_bytes: float = math.nan


class LocalHooks:
    """Client-side callbacks around one client's local training. Defaults: nothing.

    Entered after the trainer froze the parameters that do not train; ``after_backward``
    runs after each backward, once the train mask is applied to the gradients; ``scores``
    is what the hooks measured (None: nothing), reported as the client's importance;
    ``skipped_modules`` how many modules they saw left out of every forward (-1: they switch none off).
    """

    def __enter__(self) -> LocalHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def after_backward(self) -> None:
        return None

    def scores(self) -> np.ndarray | None:
        return None

    def skipped_modules(self) -> int:
        return -1


class Strategy:
    """Defaults: every group trains and is uploaded, nothing is measured, no server state."""

    name: ClassVar[str]
    # The measurement clients record while they train, or None: "confidence" is Eq. 6.
    importance: ClassVar[str | None] = None
    # Whether the paper's analytic OPs (LoRA on heads, fedmpi.accounting) describe its clients' work.
    paper_ops: ClassVar[bool] = True
    # The next global vector is the current one plus a combined update, so a server optimizer
    # (server.optimizer) can step on that update; False for strategies that re-initialise adapters.
    steps_by_delta: ClassVar[bool] = True

    def __init__(self, cfg: Any, groups: GroupMap, run: RunInfo | None = None) -> None:
        self.cfg = cfg
        self.groups = groups
        self.run = run
        # Each client's device class (fedmpi.devices), recorded whatever the strategy does with it.
        self.device_class = None if run is None else client_classes(run.devices, run.seed, run.num_clients)

    @classmethod
    def peft_method(cls, cfg: Any, lora: Any) -> Any:
        """The PEFT method this strategy needs (a ``PeftMethod``), or None for the run's LoRA."""
        return None

    @property
    def needs_confidence(self) -> bool:
        """Whether clients ever measure head confidence (Eq. 6), so attention must record it."""
        return self.importance == "confidence"

    # The strategy also changes frozen weights (FLoRA, FedEx-LoRA): rank 0's ``frozen_weights()``
    # is broadcast after every aggregation and written into every rank's model by ``set_frozen_weights``.
    moves_frozen_weights: ClassVar[bool] = False
    # Evaluation runs on the per-client models ``evaluation_models`` gives (FedSA-LoRA), not the global one.
    personal_evaluation: ClassVar[bool] = False
    # server.evaluation when the config leaves it unset: global (the evaluated examples as they are) or
    # personal (the latest round's clients' own label mixes).
    default_evaluation: ClassVar[str] = "global"

    @classmethod
    def for_run(cls, cfg: Any, bundle: Any, run: RunInfo) -> Strategy:
        """The strategy for a run's built model (``ModelBundle``); default: ``cls(cfg, cls.group_map(bundle), run)``."""
        return cls(cfg, cls.group_map(bundle), run)
    # Eq. 6 settings and how untrained groups are handled (README "The method"); defaults: the paper's.
    importance_exclude: ClassVar[str] = "eos"  # key/query tokens confidence ignores (fedmpi.models.exclusion)
    skip_first_queries: ClassVar[int] = 0  # leading queries of causal self-attention left out
    scores_uploaded: ClassVar[bool] = False  # score the trained model in eval mode, not during training
    removes_untrained: ClassVar[bool] = False  # untrained heads are left out of the forward and backward

    @classmethod
    def group_map(cls, bundle: Any) -> GroupMap:
        """The parameter groups this strategy works on, for a built model (``ModelBundle``).

        Default: the attention heads, the paper's groups. A strategy whose groups are
        something else (transformer blocks, rank triplets) overrides this.
        """
        return bundle.groups

    # ---- client side (every rank) ----------------------------------------------------------
    def client_params(self, ctx: ClientContext, params: np.ndarray) -> np.ndarray:
        """The vector this client starts from; its delta is taken against it. Default: the global one."""
        return params

    def set_frozen_weights(self, model: Any, frozen: np.ndarray) -> None:
        """Write rank 0's broadcast frozen weights into this rank's model (``moves_frozen_weights``)."""
        raise NotImplementedError

    def train_mask(self, ctx: ClientContext, score: Callable[[], np.ndarray]) -> np.ndarray | None:
        """Groups that train this round (bool per group), or None for all of them.

        ``score()`` measures the received global model's importance on the client's data
        (forward only), for strategies that choose before training.
        """
        return None

    def upload_mask(self, ctx: ClientContext, scores: np.ndarray | None, trained: np.ndarray | None) -> np.ndarray | None:
        """Groups uploaded after training (bool per group), or None for every element.

        ``scores`` is what the client measured while training (``importance``), ``trained``
        the mask ``train_mask`` returned.
        """
        return trained

    def group_scores(self, scores: np.ndarray | None) -> np.ndarray | None:
        """The scores an update records, one per group, from what the client measured; default: as measured."""
        return scores

    def realised_sparsity(self, ctx: ClientContext, mask: np.ndarray | None) -> float:
        """The share of its groups a client pruned, given the groups it uploaded: recorded, and the sparsity
        of its analytic OPs. Default: the share of the groups it did not upload (0 when it sent everything)."""
        return realised_sparsity(mask)

    def lora_rank(self, ctx: ClientContext) -> int | None:
        """The LoRA rank the client trains, for its analytic OPs; None: ``peft.lora.rank`` (default)."""
        return None

    def local_hooks(self, ctx: ClientContext, trained: np.ndarray | None) -> LocalHooks:
        """Callbacks around the client's local training (default: none)."""
        return LocalHooks()

    def client_budget(self, ctx: ClientContext) -> ClientBudget:
        """The client's device budget and the strategy's planned costs, recorded per client-round."""
        return ClientBudget(-1 if self.device_class is None else int(self.device_class[ctx.client]))

    # ---- server side (rank 0) --------------------------------------------------------------
    def round_message(self, round_: int, selected: np.ndarray) -> Any:
        """Broadcast to every client of ``round_`` with the selection ``selected`` (None: nothing)."""
        return None

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        """The next global trainable vector from updates given in client id order."""
        raise NotImplementedError

    def frozen_weights(self) -> np.ndarray:
        """The frozen weights every rank's model must hold now (``moves_frozen_weights``), float32."""
        raise NotImplementedError

    def upload_bytes(self, sizer: Callable[[np.ndarray | None], int], mask: np.ndarray | None) -> int:
        """The paper-convention upload of a client that sent ``mask``; default: the sizer's count."""
        return sizer(mask)

    def evaluation_models(self, params: np.ndarray) -> list[tuple[int, np.ndarray]] | None:
        """Rank 0, ``personal_evaluation``: (client, model vector) pairs to evaluate (the mean of their
        results is reported), or None for the global model."""
        return None

    def download_bytes(self, client: int, adapter_bytes: int) -> int:
        """The paper-convention bytes client ``client`` receives; default: every adapter element."""
        return adapter_bytes

    def state(self) -> dict[str, np.ndarray]:
        """Server state to checkpoint after every round (arrays only, restored bit-exactly)."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"strategy {self.name} keeps no state, but the checkpoint has {sorted(state)}")
