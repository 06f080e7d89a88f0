"""Reading per-client group data from a loaded result file: kept groups per family and head importance (paper Fig. 5).

Builds on ``fedmpi.analyze.Run`` (the file in memory) and, like it, needs neither torch nor MPI.
The importance readers speak of heads only: their columns are ``head_columns``, one per attention
module and head, whatever other groups the run's strategy had.
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


def head_columns(run: Run) -> np.ndarray:
    """The columns of the 2-D ``/clients`` group datasets that are attention heads, in group-id order.

    One column per (attention module, head): the groups of every ``/groups`` family whose kind is in
    ``HEAD_FAMILY_KINDS`` (a family is one attention module, e.g. one layer's self attention). A head's
    group owns its share of every projection of its module that the PEFT method trains (under LoRA:
    its rows of the q, k and v B's), so a column is a head, never a (projection, head) pair. Groups
    that are not heads are left out: the one group per LoRA module's A that the federated-LoRA
    strategies add after the heads under ``strategy.head_pruning`` (scored 0, never pruned), blocks,
    triplets. ValueError, naming the path, if the run recorded no groups or none of them is a head.
    """
    if not run.groups:
        raise ValueError(f"{run.path}: no parameter groups recorded (num_groups_total = 0)")
    kinds, counts = run.groups["family_kinds"], run.groups["num_groups"].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    heads = [f for f, kind in enumerate(kinds) if kind in rs.HEAD_FAMILY_KINDS]
    if not heads:
        raise ValueError(f"{run.path}: no attention-head groups recorded (group family kinds: {sorted(set(kinds))})")
    return np.concatenate([np.arange(offsets[f], offsets[f + 1]) for f in heads])


def importance_rows(run: Run) -> np.ndarray:
    """(client-rounds x heads, ``head_columns``): every head's score as the client measured it, pruned
    heads included (paper Fig. 5). A file written before ``measured_importance`` holds only the uploaded
    scores (0 for pruned heads); those are returned for it (``has_measured_importance`` tells which)."""
    for name in (rs.CLIENT_MEASURED_IMPORTANCE, rs.CLIENT_IMPORTANCE):
        if name in run.clients:
            return run.clients[name][:, head_columns(run)].astype(np.float64)
    raise ValueError(f"{run.path}: no group importance recorded (num_groups_total = 0)")


def kept_heads(run: Run) -> np.ndarray:
    """(client-rounds x heads, ``head_columns``) bool: the heads each client kept (uploaded)."""
    if rs.CLIENT_GROUP_MASK not in run.clients:
        raise ValueError(f"{run.path}: no group mask recorded (num_groups_total = 0)")
    return run.clients[rs.CLIENT_GROUP_MASK][:, head_columns(run)].astype(bool)


def has_measured_importance(run: Run) -> bool:
    return rs.CLIENT_MEASURED_IMPORTANCE in run.clients


def importance_matrix(run: Run, round: int | None = None) -> np.ndarray:
    """(num_clients x heads) head importance per client, pruned heads included (paper Fig. 5); the
    columns are ``head_columns``' (one per attention module and head), as in ``importance_rows``.

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
    """(num_clients x num_clients) Euclidean distance between clients' mean head-importance vectors
    (``importance_matrix``: one coordinate per attention module and head; paper Fig. 5)."""
    m = importance_matrix(run, round)
    return np.sqrt(((m[:, None, :] - m[None, :, :]) ** 2).sum(axis=-1))
