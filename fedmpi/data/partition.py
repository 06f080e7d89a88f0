"""Splitting a training set over simulated clients: IID shards and Dirichlet label skew.

A ``Partition`` holds only example indices (one int64 array grouped by client, plus
offsets), never copies of data, and every step is vectorised over examples, so 100,000
clients over 400,000 examples take a few MB and well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Partition:
    """Client ``c`` owns train examples ``order[offsets[c]:offsets[c+1]]`` (ascending)."""

    order: np.ndarray  # int64 train-example indices grouped by client
    offsets: np.ndarray  # int64, len num_clients + 1

    def __post_init__(self) -> None:
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.order) or np.any(np.diff(self.offsets) < 0):
            raise ValueError("partition offsets must rise from 0 to len(order)")
        # Keep read-only views, so the slices handed out by client_indices cannot corrupt the
        # partition (the caller's own arrays stay writeable).
        for name in ("order", "offsets"):
            view = getattr(self, name).view()
            view.flags.writeable = False
            object.__setattr__(self, name, view)

    @property
    def num_clients(self) -> int:
        return len(self.offsets) - 1

    def client_indices(self, client: int) -> np.ndarray:
        """The client's example indices: a read-only view, sorted ascending."""
        return self.order[self.offsets[client] : self.offsets[client + 1]]

    def num_samples(self, client: int) -> int:
        return int(self.offsets[client + 1] - self.offsets[client])

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def from_assignment(client_of: np.ndarray, num_clients: int) -> Partition:
    """The partition in which example ``i`` belongs to client ``client_of[i]``."""
    # A stable sort by client keeps indices ascending within each client.
    order = np.argsort(client_of, kind="stable").astype(np.int64, copy=False)
    offsets = np.zeros(num_clients + 1, dtype=np.int64)
    np.cumsum(np.bincount(client_of, minlength=num_clients), out=offsets[1:])
    return Partition(order=order, offsets=offsets)


def _check_counts(num_examples: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > num_examples:
        raise ValueError(
            f"num_clients={num_clients} exceeds the {num_examples} training examples; "
            "every client needs at least one example"
        )


def partition_iid(num_examples: int, num_clients: int, rng: np.random.Generator) -> Partition:
    """A random permutation cut into ``num_clients`` shards whose sizes differ by at most 1
    (the first ``num_examples % num_clients`` clients get one more)."""
    _check_counts(num_examples, num_clients)
    base, extra = divmod(num_examples, num_clients)
    sizes = np.full(num_clients, base, dtype=np.int64)
    sizes[:extra] += 1
    shard_of_position = np.repeat(np.arange(num_clients, dtype=np.int64), sizes)
    client_of = np.empty(num_examples, dtype=np.int64)
    client_of[rng.permutation(num_examples)] = shard_of_position
    return from_assignment(client_of, num_clients)


def partition_dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator) -> Partition:
    """Label skew: for each label, its examples are shared among clients in proportions
    drawn from Dirichlet(alpha * 1), the per-label form of Hsu et al. (2019) used by
    Yurochkin et al. (2019) and NIID-Bench (Li et al., 2022). Small ``alpha`` gives each
    client few labels; large ``alpha`` approaches IID.

    A client left with no example gets one, moved from the largest clients (see
    ``_fill_empty_clients``), so every client can train.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d, got shape {labels.shape}")
    num_examples = len(labels)
    _check_counts(num_examples, num_clients)
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"Dirichlet alpha must be a positive number, got {alpha}")

    # Positions in "assignment order": all examples of label 0 (shuffled), then label 1, ...
    # and the client that receives each position.
    examples = []
    receivers = []
    for label in np.unique(labels):  # a loop over labels (few), never over clients
        members = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        # Client c takes positions [cuts[c-1], cuts[c]) of this label's examples.
        cuts = np.floor(np.cumsum(proportions) * len(members)).astype(np.int64)
        cuts[-1] = len(members)  # guard against the cumulative sum ending just below 1.0
        receivers.append(np.searchsorted(cuts, np.arange(len(members)), side="right"))
        examples.append(members)
    examples_in_order = np.concatenate(examples)
    client_in_order = np.concatenate(receivers).astype(np.int64, copy=False)
    del examples, receivers  # the per-label pieces would double the peak memory

    client_of = np.empty(num_examples, dtype=np.int64)
    client_of[examples_in_order] = client_in_order
    _fill_empty_clients(client_of, examples_in_order, client_in_order, num_clients)
    return from_assignment(client_of, num_clients)


def _fill_empty_clients(
    client_of: np.ndarray, examples_in_order: np.ndarray, client_in_order: np.ndarray, num_clients: int
) -> None:
    """Give each empty client one example taken from the largest clients, in place.

    Like "repeatedly move one example from the currently largest client" (the same sizes,
    up to which donors end one higher) but vectorised: the largest clients are cut down to
    a common level ``t >= 1`` (some keep ``t + 1``) so that exactly as many examples are
    freed as there are empty clients.
    Deterministic: ties go to lower client ids, a donor gives up the examples it received
    last in assignment order, and empty clients are filled in increasing id order.
    """
    sizes = np.bincount(client_of, minlength=num_clients)
    empty = np.flatnonzero(sizes == 0)
    if len(empty) == 0:
        return
    need = len(empty)

    # freed(t) = sum(max(sizes - t, 0)) falls as t rises; binary-search the largest t >= 1
    # with freed(t) >= need. freed(1) = num_examples - num_nonempty >= need because
    # num_examples >= num_clients, so such a t exists.
    def freed(level: int) -> int:
        return int(np.maximum(sizes - level, 0).sum())

    lo, hi = 1, int(sizes.max())  # freed(lo) >= need > freed(hi) = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if freed(mid) >= need else (lo, mid)
    t = lo
    give = np.maximum(sizes - t, 0)
    excess = int(give.sum()) - need  # < number of donors: they keep one more, lowest ids first
    donors = np.flatnonzero(give > 0)
    give[donors[:excess]] -= 1

    # Within each client, rank positions by assignment order; donate the last ``give[c]``.
    by_client = np.argsort(client_in_order, kind="stable")
    starts = np.zeros(num_clients + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    grouped_clients = client_in_order[by_client]
    rank = np.arange(len(by_client), dtype=np.int64)
    rank -= starts[grouped_clients]
    donated = rank >= (sizes - give)[grouped_clients]
    del rank, grouped_clients
    moved = examples_in_order[by_client[donated]]
    client_of[moved] = empty
