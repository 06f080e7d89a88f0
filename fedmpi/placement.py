"""Where a round's clients train: ranks by work, and which of a rank's clients share a step.

Clients go to ranks by longest processing time first (LPT) on their token counts, a
pure function of the selection and the partition, so every rank computes the same plan and
results do not depend on it (the server combines updates in client id order). The
selection in LPT order is first cut into groups of ``clients_per_step`` clients that train
together (``fedmpi/batched.py``), and the groups are placed, so who shares a step does not
depend on the number of ranks either.
"""

from __future__ import annotations

import numpy as np

from fedmpi.data import Partition, TokenizedSplit


def client_token_counts(partition: Partition, split: TokenizedSplit) -> np.ndarray:
    """int64 per client: the tokens of its examples (inputs, plus targets for generation)."""
    lengths = split.input_ids.lengths()
    if split.target_ids is not None:
        lengths = lengths + split.target_ids.lengths()
    client_of = np.repeat(np.arange(partition.num_clients), partition.sizes())
    return np.bincount(client_of, weights=lengths[partition.order], minlength=partition.num_clients).astype(np.int64)


def lpt_order(selected: np.ndarray, work: np.ndarray) -> list[int]:
    """The selected clients by decreasing work, ties by ascending client id."""
    clients = np.asarray(selected, dtype=np.int64)
    order = np.lexsort((clients, -work[clients]))  # last key is the primary one
    return clients[order].tolist()


def step_groups(clients: list[int], clients_per_step: int) -> list[list[int]]:
    """Consecutive groups of ``clients_per_step`` clients (the last may be smaller)."""
    if clients_per_step < 1:
        raise ValueError(f"clients_per_step must be >= 1, got {clients_per_step}")
    return [clients[i : i + clients_per_step] for i in range(0, len(clients), clients_per_step)]


def assign_by_work(
    selected: np.ndarray, work: np.ndarray, worker_ranks: list[int], clients_per_step: int = 1
) -> dict[int, list[list[int]]]:
    """Each rank's groups of clients that train together, in the order it trains them.

    The groups are consecutive runs of ``clients_per_step`` clients of the whole selection
    in LPT order, so who shares a step never depends on the number of ranks. Groups then go
    to ranks by LPT: largest group first, to the rank with the least work so far (ties: the
    earliest rank in ``worker_ranks``).
    """
    groups = step_groups(lpt_order(selected, work), clients_per_step)
    group_work = [int(work[g].sum()) for g in groups]  # non-increasing: groups cut an LPT list
    plan: dict[int, list[list[int]]] = {r: [] for r in worker_ranks}
    load = np.zeros(len(worker_ranks), dtype=np.int64)
    for group, amount in zip(groups, group_work):
        i = int(np.argmin(load))  # argmin returns the first minimum
        plan[worker_ranks[i]].append(group)
        load[i] += amount
    return plan
