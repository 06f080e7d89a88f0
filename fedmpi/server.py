"""The rank-0 role: choose each round's clients, combine their updates, keep the per-client table.

The server owns the global trainable vector, the strategy's server state and, per logical
client, its loss from its last participation and how often it was seen (what loss-based
selection needs). It is built on rank 0 only.
"""

from __future__ import annotations

import numpy as np

from fedmpi.config import ServerConfig
from fedmpi.nonfinite import describe_rejected, split_finite
from fedmpi.payload import ClientUpdate, selected_elements
from fedmpi.results import ServerState
from fedmpi.selection import SelectionInput, select
from fedmpi.server_optim import build_server_optimizer
from fedmpi.strategies import Strategy


OPTIMIZER_PREFIX = "server_optimizer."  # its state sits beside the strategy's in the checkpoint


class Server:
    def __init__(self, cfg: ServerConfig, strategy: Strategy, num_clients: int, params: np.ndarray, seed: int) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self.seed = seed
        self.params = params.copy()
        # "We initiate all clients with high loss values": unseen clients rank first in Eq. 9.
        self.last_loss = np.full(num_clients, np.inf)
        self.times_seen = np.zeros(num_clients, dtype=np.int32)
        self.global_loss = float("nan")  # L_g of the latest evaluated global model
        self.rejected: list[int] = []  # clients whose update the last apply() rejected as non-finite
        self.optimizer = build_server_optimizer(cfg.optimizer, cfg.lr, cfg)
        if cfg.optimizer != "sgd" and not strategy.steps_by_delta:
            raise ValueError(f"server.optimizer={cfg.optimizer} needs a strategy whose update is a delta; "
                             f"strategy {strategy.name} re-initialises its adapters: use server.optimizer=sgd")

    def _checkpointed(self) -> dict[str, np.ndarray]:
        optimizer = {f"{OPTIMIZER_PREFIX}{k}": v for k, v in self.optimizer.state().items()}
        return {**self.strategy.state(), **optimizer}

    def _combine(self, updates: list[ClientUpdate]) -> np.ndarray | None:
        """The next global vector from finite updates, or None if combining them overflows."""
        if self.cfg.optimizer == "sgd":  # eta inside Eq. 5 / Eq. 8, exactly as the strategy defines it
            combined = self.strategy.aggregate(self.params, updates, self.cfg.lr)
            return combined if np.isfinite(combined).all() else None
        # The combined update at eta = 1 is the optimizer's (negative) pseudo-gradient.
        combined = self.strategy.aggregate(self.params, updates, 1.0)
        if not np.isfinite(combined).all():
            return None  # before the step, so the optimizer's moments stay finite too
        index = self.strategy.groups.group_index
        touched = np.zeros(self.params.shape, dtype=bool)
        for u in updates:  # an element no client sent (a group all pruned) has no pseudo-gradient
            touched |= selected_elements(index, u.group_mask)
        return self.optimizer.step(self.params, combined.astype(np.float64) - self.params, touched)

    def state(self, round_: int) -> ServerState:
        return ServerState(round_, self.params, self.last_loss, self.times_seen, self.global_loss, self._checkpointed())

    def restore(self, state: ServerState) -> None:
        if state.trainable.shape != self.params.shape or state.last_loss.shape != self.last_loss.shape:
            raise ValueError("output.resume: the checkpoint does not fit this model or this number of clients")
        self.params = state.trainable.copy()
        self.last_loss = state.last_loss.copy()
        self.times_seen = state.times_seen.copy()
        self.global_loss = state.global_loss
        prefix = OPTIMIZER_PREFIX
        self.optimizer.load_state({k.removeprefix(prefix): v for k, v in state.strategy.items() if k.startswith(prefix)})
        self.strategy.load_state({k: v for k, v in state.strategy.items() if not k.startswith(prefix)})

    def select(self, round_: int) -> np.ndarray:
        state = SelectionInput(round_, self.cfg.num_clients_per_round, self.last_loss, self.global_loss, self.seed)
        return select(self.cfg.selection, state)

    def apply(self, updates: list[ClientUpdate], round_: int) -> None:
        """Combine one round's updates (in client id order) into the global vector.

        Non-finite updates are rejected (``self.rejected``) or end the run (on_nonfinite=fail);
        a rejected client's table entry stays as it was.
        """
        updates, rejected = split_finite(sorted(updates, key=lambda u: u.client))
        if rejected and self.cfg.on_nonfinite == "fail":
            raise ValueError(describe_rejected(round_, rejected))
        if updates:
            combined = self._combine(updates)
            if combined is None:  # finite updates whose combination overflows float32
                updates, rejected = [], rejected + updates
                if self.cfg.on_nonfinite == "fail":
                    raise ValueError(describe_rejected(round_, rejected))
            else:
                self.params = combined
        self.rejected = sorted(u.client for u in rejected)
        for u in updates:
            self.last_loss[u.client] = u.train_loss
            self.times_seen[u.client] += 1
