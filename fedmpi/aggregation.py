"""Server-side combination of client updates: FedAvg (Eq. 5), group-wise weighting (Eq. 8), group-wise means.

Pure functions over flat float arrays. Updates arrive as dense deltas (zeros where a
client sent nothing) and are combined in the order given (client id order), in float64,
so the result is the same bit for bit however the clients were spread over processes.
"""

from __future__ import annotations

import numpy as np


def fedavg(global_params: np.ndarray, deltas: list[np.ndarray], num_samples: np.ndarray, server_lr: float) -> np.ndarray:
    """Eq. 5: Phi <- Phi + eta * sum_c |D_c| dPhi_c / sum_c |D_c|."""
    weights = np.asarray(num_samples, dtype=np.float64)
    total = np.zeros(global_params.shape, dtype=np.float64)
    for weight, delta in zip(weights, deltas, strict=True):
        total += weight * delta
    return (global_params + server_lr * total / weights.sum()).astype(np.float32)


def groupwise(
    global_params: np.ndarray,
    deltas: list[np.ndarray],
    num_samples: np.ndarray,
    group_weights: np.ndarray,
    group_index: np.ndarray,
    server_lr: float,
    eps: float,
) -> np.ndarray:
    """Eq. 8 on group-owned elements, Eq. 5 on the rest.

    ``group_weights[c, g]`` is alpha_gc: client c's importance score of group g (a head, in
    the paper), or its sample count for plain FedAvg of the kept groups, and 0 where client
    c did not send the group. Each group's slice becomes
    p_g + eta * sum_c alpha_gc dp_gc / (sum_c alpha_gc + eps): a weighted mean over the
    clients that sent it; a group no client sent is unchanged. ``group_index[e]`` is the
    group of element e, or -1 for elements no group owns (all of LoRA's A, a task head),
    which follow Eq. 5.
    """
    weights = np.asarray(num_samples, dtype=np.float64)
    group_weights = np.asarray(group_weights, dtype=np.float64)
    in_group = group_index >= 0
    owner = group_index[in_group]
    dense_sum = np.zeros(int((~in_group).sum()), dtype=np.float64)
    group_sum = np.zeros(owner.shape[0], dtype=np.float64)
    for c, delta in enumerate(deltas):
        dense_sum += weights[c] * delta[~in_group]
        group_sum += group_weights[c, owner] * delta[in_group]
    group_norm = group_weights.sum(axis=0)[owner] + eps
    out = global_params.astype(np.float64)
    out[~in_group] += server_lr * dense_sum / weights.sum()
    out[in_group] += server_lr * group_sum / group_norm
    return out.astype(np.float32)


def groupwise_mean(
    global_params: np.ndarray,
    deltas: list[np.ndarray],
    num_samples: np.ndarray,
    group_masks: np.ndarray,
    group_index: np.ndarray,
    server_lr: float,
) -> np.ndarray:
    """Each group's elements += eta * sum_c |D_c| d_c / sum_c |D_c| over the clients c that sent the group;
    a group nobody sent is unchanged; elements of no group (-1) take FedAvg over all clients (Eq. 5).

    Float64, clients in the order given, so the result does not depend on how they were spread.
    """
    weights = np.asarray(num_samples, dtype=np.float64)
    masks = np.asarray(group_masks, dtype=bool)
    per_group = masks * weights[:, None]  # (clients, groups)
    element_weights = np.concatenate([per_group, weights[:, None]], axis=1)[:, group_index]  # -1 -> all clients
    total = np.zeros(global_params.shape, dtype=np.float64)
    norm = np.zeros(global_params.shape, dtype=np.float64)
    for c, delta in enumerate(deltas):
        total += element_weights[c] * delta
        norm += element_weights[c]
    out = global_params.astype(np.float64)
    sent = norm > 0
    out[sent] += server_lr * total[sent] / norm[sent]
    return out.astype(np.float32)
