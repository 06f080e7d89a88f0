"""Server-side combination of client updates: FedAvg (Eq. 5) and head-wise weighting (Eq. 8).

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


def headwise(
    global_params: np.ndarray,
    deltas: list[np.ndarray],
    num_samples: np.ndarray,
    head_weights: np.ndarray,
    head_index: np.ndarray,
    server_lr: float,
    eps: float,
) -> np.ndarray:
    """Eq. 8 on head-attached elements, Eq. 5 on the rest.

    ``head_weights[c, h]`` is alpha_hc: the client's importance score of head h (or its
    sample count, for plain FedAvg of the kept heads), and 0 where client c pruned the
    head. Each head's slice becomes p_h + eta * sum_c alpha_hc dp_hc / (sum_c alpha_hc + eps):
    a weighted mean over the clients that kept it; a head no client kept is unchanged.
    ``head_index[e]`` is the global head of element e, or -1 for elements no head owns
    (all of LoRA's A, a task head), which follow Eq. 5.
    """
    weights = np.asarray(num_samples, dtype=np.float64)
    head_weights = np.asarray(head_weights, dtype=np.float64)
    is_head = head_index >= 0
    owner = head_index[is_head]
    dense_sum = np.zeros(int((~is_head).sum()), dtype=np.float64)
    head_sum = np.zeros(owner.shape[0], dtype=np.float64)
    for c, delta in enumerate(deltas):
        dense_sum += weights[c] * delta[~is_head]
        head_sum += head_weights[c, owner] * delta[is_head]
    head_norm = head_weights.sum(axis=0)[owner] + eps
    out = global_params.astype(np.float64)
    out[~is_head] += server_lr * dense_sum / weights.sum()
    out[is_head] += server_lr * head_sum / head_norm
    return out.astype(np.float32)
