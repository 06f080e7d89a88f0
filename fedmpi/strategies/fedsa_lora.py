"""FedSA-LoRA (Guo et al. 2025): only A is shared and averaged; B and the task head stay with each client.

Rank 0 keeps every client's private elements (its B's and task head) in a client store
(``fedmpi/client_store.py``: memory, or one file per client on disk) and sends the round's
clients theirs with the selection (the round message), so whichever rank trains a client
starts from its own B and head. A client that never trained starts from the global ones.
Clients train everything and send everything back: A is averaged (p_c), the private part
goes into the store. Only A counts as upload and download in the paper convention; the
private state is what really moves over MPI. The global vector's B and task head stay at
their initial values, so evaluation is per client: the models of the latest round's
clients (global A + their own B and head) are evaluated, and their mean is the round's
eval loss and metric. ``server.evaluation=personal`` (its default here, what FedSA-LoRA's
paper reports: each client on its own test distribution) scores each model on the
evaluated examples reweighted to its client's training label mix; ``global`` scores it on
them as they are, which for a non-IID client mostly measures the classes it never saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedmpi.client_store import build_client_store
from fedmpi.config import FedSALoraConfig
from fedmpi.models.groups import GroupMap
from fedmpi.models.lora_factors import LoraFactors, factor_groups, factor_mask
from fedmpi.payload import ClientUpdate
from fedmpi.strategies.base import ClientContext
from fedmpi.strategies.lora_base import LoraStrategy

STORE_PREFIX = "store."


class FedSALora(LoraStrategy):
    name = "fedsa_lora"
    cfg: FedSALoraConfig
    personal_evaluation = True
    default_evaluation = "personal"

    @classmethod
    def lora_groups(cls, factors: tuple[LoraFactors, ...], numel: int) -> GroupMap:
        return factor_groups(factors, numel)

    def setup(self, factors: tuple[LoraFactors, ...], model: Any, *, seed: int, num_clients: int) -> None:
        super().setup(factors, model, seed=seed, num_clients=num_clients)
        shared = np.zeros(self.groups.group_index.size, dtype=bool)
        for f in factors:
            shared[f.a] = True
        self.private = ~shared  # B's and the task head
        self.store = build_client_store(self.cfg.store, Path(self.cfg.store_dir or "."))
        self.round = 0
        self.last_clients = np.zeros(0, dtype=np.int64)  # whose models the next evaluation uses

    def _personal(self, params: np.ndarray, private: np.ndarray | None) -> np.ndarray:
        if private is None:
            return params
        out = params.copy()
        out[self.private] = private
        return out

    # ---- client side ---------------------------------------------------------------------------
    def client_params(self, ctx: ClientContext, params: np.ndarray) -> np.ndarray:
        return self._personal(params, ctx.message.get(ctx.client))

    def upload_mask(self, ctx: ClientContext, scores, trained) -> None:
        return None  # everything: A to average, the rest back to the client's store entry

    def upload_bytes(self, sizer, mask) -> int:
        return sizer(factor_mask(self.factors, "A"))

    def download_bytes(self, client: int, adapter_bytes: int) -> int:
        return 4 * sum(f.rank * f.d_in for f in self.factors)

    # ---- server side ---------------------------------------------------------------------------
    def round_message(self, round_: int, selected: np.ndarray) -> dict[int, np.ndarray]:
        self.round = round_
        stored = {int(c): self.store.get(int(c)) for c in selected}
        return {c: v for c, v in stored.items() if v is not None}

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        deltas, weights = self.deltas(updates), self.client_weights(updates)
        shared = ~self.private
        out = params.astype(np.float64)
        out[shared] += server_lr * sum(w * d[shared].astype(np.float64) for w, d in zip(weights, deltas))
        for u, d in zip(updates, deltas):
            start = self._personal(params, self.store.get(u.client))
            self.store.put(u.client, self.round, (start[self.private] + d[self.private]).astype(np.float32))
        self.store.commit(self.round)
        self.last_clients = np.array([u.client for u in updates], dtype=np.int64)
        return out.astype(np.float32)

    def evaluation_models(self, params: np.ndarray) -> list[tuple[int, np.ndarray]] | None:
        if self.last_clients.size == 0:
            return None  # before round 1 every client's model is the global one
        return [(int(c), self._personal(params, self.store.get(int(c)))) for c in self.last_clients]

    def state(self) -> dict[str, np.ndarray]:
        store = {f"{STORE_PREFIX}{k}": v for k, v in self.store.state().items()}
        return {**store, "last_clients": self.last_clients.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.store.load_state({k.removeprefix(STORE_PREFIX): v for k, v in state.items() if k.startswith(STORE_PREFIX)})
        self.last_clients = np.asarray(state["last_clients"], dtype=np.int64)
