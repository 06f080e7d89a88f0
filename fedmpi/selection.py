"""Who trains next: random selection and the paper's loss-difference selection (Eq. 9).

Pure functions over the server's per-client table; the caller passes a generator derived
from (seed, round), so the choice does not depend on the number of processes. Both
return client ids in ascending order, the order in which updates are combined.
"""

from __future__ import annotations

import numpy as np


def select_random(num_clients: int, num_selected: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly without replacement."""
    if not 1 <= num_selected <= num_clients:
        raise ValueError(f"cannot select {num_selected} of {num_clients} clients")
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
    if not 1 <= num_selected <= num_clients:
        raise ValueError(f"cannot select {num_selected} of {num_clients} clients")
    gap = last_loss - global_loss if np.isfinite(global_loss) else last_loss.copy()
    tie_break = rng.permutation(num_clients)
    # lexsort sorts by the last key first: descending gap, then the random tie-break.
    order = np.lexsort((tie_break, -gap))
    return np.sort(order[:num_selected]).astype(np.int64)
