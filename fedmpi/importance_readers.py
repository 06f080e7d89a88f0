"""Reading per-client group data from a loaded result file: kept groups per family and head importance (paper Fig. 5).

Builds on ``fedmpi.analyze.Run`` (the file in memory) and, like it, needs neither torch nor MPI.
"""

from __future__ import annotations

import numpy as np

from fedmpi import results_schema as rs
from fedmpi.analyze import Run


def family_counts(run: Run) -> np.ndarray:
    """(client-rounds x families) kept groups per family: each module's rank under FedARA, 0/1 per block."""
    if rs.CLIENT_GROUP_MASK not in run.clients or not run.groups:
        raise ValueError(f"{run.path}: no parameter groups recorded (num_groups_total = 0)")
    offsets = np.concatenate([[0], np.cumsum(run.groups["num_groups"])])
    mask = run.clients[rs.CLIENT_GROUP_MASK].astype(np.int64)
    return np.add.reduceat(mask, offsets[:-1], axis=1) if len(mask) else np.zeros((0, len(offsets) - 1), np.int64)


def _num_clients(run: Run) -> int:
    seen = int(run.clients["client"].max()) + 1 if len(run.clients["client"]) else 0
    return max(int(run.attrs.get(rs.ATTR_NUM_CLIENTS) or 0), seen)


def importance_rows(run: Run) -> np.ndarray:
    """(client-rounds x num_groups_total): every group's score as the client measured it, pruned groups
    included (paper Fig. 5). A file written before ``measured_importance`` holds only the uploaded scores
    (0 for pruned groups); those are returned for it (``has_measured_importance`` tells which)."""
    for name in (rs.CLIENT_MEASURED_IMPORTANCE, rs.CLIENT_IMPORTANCE):
        if name in run.clients:
            return run.clients[name].astype(np.float64)
    raise ValueError(f"{run.path}: no group importance recorded (num_groups_total = 0)")


def has_measured_importance(run: Run) -> bool:
    return rs.CLIENT_MEASURED_IMPORTANCE in run.clients


def importance_matrix(run: Run, round: int | None = None) -> np.ndarray:
    """(num_clients x num_groups_total) group (head) importance per client, pruned groups included (paper Fig. 5).

    The mean over the client's participations, or its value at one `round`; NaN rows for clients
    that did not take part.
    """
    importance = importance_rows(run)
    client = run.clients["client"]
    keep = np.ones(len(client), bool) if round is None else run.clients["round"] == round
    out = np.full((_num_clients(run), importance.shape[1]), np.nan)
    for c in np.unique(client[keep]):
        out[c] = importance[keep & (client == c)].mean(axis=0)
    return out


def client_distance(run: Run, round: int | None = None) -> np.ndarray:
    """(num_clients x num_clients) Euclidean distance between clients' mean importance vectors (paper Fig. 5)."""
    m = importance_matrix(run, round)
    return np.sqrt(((m[:, None, :] - m[None, :, :]) ** 2).sum(axis=-1))
