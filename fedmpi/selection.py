"""Who trains next: a registry of selection rules (random, the paper's Eq. 9, cyclic sweeps).

Every rule is a pure function of a ``SelectionInput`` (the round, K, and the server's
per-client table); its random draws come from streams keyed by (seed, round) or
(seed, sweep), so the choice does not depend on the number of processes. Each returns
client ids in ascending order, the order in which updates are combined. A rule registers
itself with ``@register_selection(name)``; ``server.selection`` names one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedmpi import seeding

CYCLIC_SWEEP = "cyclic_sweep"  # seeding purpose of a cyclic sweep's order


@dataclass(frozen=True)
class SelectionInput:
    """What a rule may look at when the server picks round ``round``'s clients (rounds start at 1)."""

    round: int
    num_selected: int  # K
    last_loss: np.ndarray  # per client: loss of its last participation, +inf if never seen
    global_loss: float  # L_g of the latest evaluated global model (NaN before any)
    seed: int

    @property
    def num_clients(self) -> int:
        return int(self.last_loss.shape[0])


SelectionRule = Callable[[SelectionInput], np.ndarray]
SELECTIONS: dict[str, SelectionRule] = {}


def register_selection(name: str) -> Callable[[SelectionRule], SelectionRule]:
    def add(rule: SelectionRule) -> SelectionRule:
        if name in SELECTIONS:
            raise ValueError(f"selection rule {name!r} registered twice")
        SELECTIONS[name] = rule
        return rule

    return add


def select(name: str, state: SelectionInput) -> np.ndarray:
    """The clients rule ``name`` picks for ``state.round``."""
    if name not in SELECTIONS:
        raise ValueError(f"unknown server.selection {name!r}; known: {', '.join(sorted(SELECTIONS))}")
    return SELECTIONS[name](state)


def _check_counts(num_clients: int, num_selected: int) -> None:
    if not 1 <= num_selected <= num_clients:
        raise ValueError(f"cannot select {num_selected} of {num_clients} clients")


def select_random(num_clients: int, num_selected: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly without replacement."""
    _check_counts(num_clients, num_selected)
    return np.sort(rng.choice(num_clients, size=num_selected, replace=False)).astype(np.int64)


def select_by_loss(
    last_loss: np.ndarray, global_loss: float, num_selected: int, rng: np.random.Generator
) -> np.ndarray:
    """Eq. 9: the top-K clients by L_c - L_g.

    ``last_loss`` holds each client's loss from its last participation, +inf for clients
    never seen ("initiate all clients with high loss"), so unseen clients come first.
    Ties (among the unseen, above all) break by a random permutation drawn from ``rng``.
    """
    num_clients = last_loss.shape[0]
    _check_counts(num_clients, num_selected)
    gap = last_loss - global_loss if np.isfinite(global_loss) else last_loss.copy()
    tie_break = rng.permutation(num_clients)
    # lexsort sorts by the last key first: descending gap, then the random tie-break.
    order = np.lexsort((tie_break, -gap))
    return np.sort(order[:num_selected]).astype(np.int64)


def sweep_orders(num_clients: int, num_selected: int, seed: int, num_sweeps: int) -> list[np.ndarray]:
    """The order in which cyclic selection visits the clients in sweeps 0 .. num_sweeps-1.

    Sweep s is the permutation drawn from (seed, s), except where a round straddles sweeps
    s-1 and s: a client that the round already takes from the end of sweep s-1 is deferred
    to just after that round's share of sweep s (the others keep their order). Each sweep
    therefore stays a permutation and no round holds a client twice.
    """
    _check_counts(num_clients, num_selected)
    orders: list[np.ndarray] = []
    for sweep in range(num_sweeps):
        order = seeding.rng(seed, CYCLIC_SWEEP, sweep).permutation(num_clients).astype(np.int64)
        start = sweep * num_clients
        head = (-start) % num_selected  # slots of sweep s in the round that straddles s-1 and s
        if sweep > 0 and head > 0:
            taken = orders[-1][num_clients - (num_selected - head) :]  # that round's share of sweep s-1
            clash = np.isin(order, taken)
            # The first ``head`` clients not taken yet fill the round; everyone else keeps their order.
            fill = np.flatnonzero(~clash)[:head]
            rest = np.setdiff1d(np.arange(num_clients), fill, assume_unique=True)
            order = np.concatenate([order[fill], order[rest]])
        orders.append(order)
    return orders


def select_cyclic(num_clients: int, num_selected: int, round_: int, seed: int) -> np.ndarray:
    """Round ``round_`` (from 1) takes positions [(round_-1) K, round_ K) of the concatenated sweeps."""
    _check_counts(num_clients, num_selected)
    if round_ < 1:
        raise ValueError(f"cyclic selection counts rounds from 1, got round {round_}")
    first = (round_ - 1) * num_selected
    last = first + num_selected  # exclusive
    orders = sweep_orders(num_clients, num_selected, seed, num_sweeps=(last - 1) // num_clients + 1)
    positions = np.arange(first, last)
    chosen = np.array([orders[p // num_clients][p % num_clients] for p in positions], dtype=np.int64)
    return np.sort(chosen)


@register_selection("random")
def _random(state: SelectionInput) -> np.ndarray:
    return select_random(state.num_clients, state.num_selected, seeding.rng(state.seed, seeding.SELECT, state.round))


@register_selection("loss")
def _loss(state: SelectionInput) -> np.ndarray:
    rng = seeding.rng(state.seed, seeding.SELECT, state.round)
    return select_by_loss(state.last_loss, state.global_loss, state.num_selected, rng)


@register_selection("cyclic")
def _cyclic(state: SelectionInput) -> np.ndarray:
    return select_cyclic(state.num_clients, state.num_selected, state.round, state.seed)
