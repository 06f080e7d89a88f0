"""Per-client state that outlives a round (FedSA-LoRA's private B and task head), keyed by client id.

The store lives with the server (rank 0): a client's state travels to whichever rank trains
it with the round's selection, and comes back with its update, so any rank can train any
client and results do not depend on the number of ranks. Each value is one float32 vector
(the client's private elements of the flat trainable vector).

- ``MemoryStore`` keeps everything in a dict; its whole content is part of the checkpoint.
- ``DiskStore`` keeps one ``.npy`` file per client and version under a folder beside the
  result file (``c<client>.r<round>.npy``), for federations too large for memory. Only the
  committed round goes into the checkpoint: on resume, versions written after it (a round
  that was killed before its checkpoint) are deleted, and the newest older one is used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

_FILE = re.compile(r"^c(\d+)\.r(\d+)\.npy$")


class MemoryStore:
    kind = "memory"

    def __init__(self) -> None:
        self._values: dict[int, np.ndarray] = {}

    def get(self, client: int) -> np.ndarray | None:
        """The client's state, or None if it never trained."""
        value = self._values.get(int(client))
        return None if value is None else value.copy()

    def put(self, client: int, round_: int, values: np.ndarray) -> None:
        self._values[int(client)] = np.array(values, dtype=np.float32)

    def commit(self, round_: int) -> None:
        """Round ``round_``'s puts are final (nothing to do in memory)."""

    def __len__(self) -> int:
        return len(self._values)

    def state(self) -> dict[str, np.ndarray]:
        clients = np.array(sorted(self._values), dtype=np.int64)
        width = next(iter(self._values.values())).size if self._values else 0
        values = np.stack([self._values[c] for c in clients.tolist()]) if clients.size else np.zeros((0, width), np.float32)
        return {"clients": clients, "values": values.astype(np.float32)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        clients, values = np.asarray(state["clients"]), np.asarray(state["values"], dtype=np.float32)
        if clients.shape[0] != values.shape[0]:
            raise ValueError(f"client store checkpoint: {clients.shape[0]} clients but {values.shape[0]} rows")
        self._values = {int(c): values[i].copy() for i, c in enumerate(clients)}


class DiskStore:
    kind = "disk"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._latest: dict[int, int] = {}  # client -> round of its newest file
        self._committed = -1
        self._superseded: dict[int, int] = {}  # client -> version its latest put replaced
        self._deletable: dict[int, int] = {}  # superseded in a round whose checkpoint is written
        self._scan(keep_until=None)

    def _path(self, client: int, round_: int) -> Path:
        return self.folder / f"c{client}.r{round_}.npy"

    def _scan(self, keep_until: int | None) -> None:
        """Index the folder; with ``keep_until``, delete versions written after that round."""
        versions: dict[int, list[int]] = {}
        for entry in os.scandir(self.folder):
            match = _FILE.match(entry.name)
            if match is None:
                continue
            client, round_ = int(match[1]), int(match[2])
            if keep_until is not None and round_ > keep_until:
                os.remove(entry.path)
                continue
            versions.setdefault(client, []).append(round_)
        self._latest = {c: max(rounds) for c, rounds in versions.items()}
        for client, rounds in versions.items():
            for old in rounds:
                if old != self._latest[client] and old <= self._committed:
                    os.remove(self._path(client, old))

    def get(self, client: int) -> np.ndarray | None:
        round_ = self._latest.get(int(client))
        return None if round_ is None else np.load(self._path(int(client), round_))

    def put(self, client: int, round_: int, values: np.ndarray) -> None:
        client = int(client)
        tmp = self.folder / f".tmp-c{client}.npy"
        np.save(tmp, np.asarray(values, dtype=np.float32))
        os.replace(tmp, self._path(client, round_))  # a reader never sees a half-written file
        previous = self._latest.get(client)
        self._latest[client] = round_
        if previous is not None and previous != round_:
            self._superseded[client] = previous

    def commit(self, round_: int) -> None:
        """Call after round ``round_``'s puts, before its checkpoint (and after the previous round's).

        The versions the previous round superseded are deleted now, since the checkpoint
        that no longer needs them is written; this round's superseded versions wait until
        the next commit, so a run killed before this round's checkpoint still finds them.
        """
        for client, old in self._deletable.items():
            self._path(client, old).unlink(missing_ok=True)
        self._deletable, self._superseded = self._superseded, {}
        self._committed = round_

    def __len__(self) -> int:
        return len(self._latest)

    def state(self) -> dict[str, np.ndarray]:
        return {"committed_round": np.array([self._committed], dtype=np.int64)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._committed = int(np.asarray(state["committed_round"])[0])
        self._superseded, self._deletable = {}, {}
        self._scan(keep_until=self._committed)


STORES = {"memory": lambda folder: MemoryStore(), "disk": DiskStore}


def build_client_store(kind: str, folder: str | Path) -> MemoryStore | DiskStore:
    if kind not in STORES:
        raise ValueError(f"client store: unknown kind {kind!r}; known: {sorted(STORES)}")
    return STORES[kind](folder)
