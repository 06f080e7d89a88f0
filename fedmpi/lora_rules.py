"""The federated-LoRA combination rules, as pure numpy over one LoRA module's per-client factors.

Notation (`../shared/notes/platform.md` section 5): client c holds A_c (r_c x d_in) and
B_c (d_out x r_c); its weights are p_c (``client_weights``: |D_c| / sum |D|, or uniform);
the LoRA scaling is s = alpha / r. Client c's effective weight is W0 + s * B_c A_c in the
(d_out, d_in) orientation of ``nn.Linear``. GPT-2's ``Conv1D`` stores W as (d_in, d_out), and
peft (``fan_in_fan_out=True``) adds the transposed product; ``lora_delta`` is the one place
that knows this, and every rule that yields a full-size matrix returns it in the base
weight's own layout. Sums run over clients in the order given (client id order), in float64.

Client weights are p_c (one per client) or, with head pruning, row weights: one per client
and output row of B (shape (C, d_out)), each row over the clients that kept its head
(``fedmpi/strategies/lora_pruning.py``). Row weights apply to B and to the products B_c A_c row
by row (row i of B_c A_c is B_c[i] A_c); A is shared by every head and keeps p_c.

| rule | returns |
|---|---|
| ``fedit`` (FedIT; RoLoRA's and FFA-LoRA's averages) | (sum p A, sum p B): inexact, the product of means |
| ``flora`` | s * sum p_c B_c A_c, added to the frozen weight; adapters are then re-initialised |
| ``fedex_lora`` | FedIT's means and the residual s * (sum p_c B_c A_c - B_mean A_mean) for the frozen weight |
| ``hetlora`` | every client at the global scaling, zero-padded to r_max and summed with p_c; client c then takes the first r_c ranks |
| ``flexlora`` | the best rank-r factors of sum p_c s_c B_c A_c (truncated SVD) |

FlexLoRA splits the singular values evenly: B = U_r sqrt(S_r / s) and A = sqrt(S_r / s) V_r^T,
so s * B A is the truncation and both factors have the same scale (LoRA trains both).
Because the truncated SVD is nested, the first r_c ranks of the rank-r_max result are the
rank-r_c truncation: one global r_max pair serves every client rank.
HetLoRA's zero padding divides by the total weight of all clients, so a rank only large
clients hold is shrunk by the share of small clients (the published rule).

Per-client ranks and the scaling: a client of rank r_c trains as peft would train a rank-r_c
adapter with the run's alpha, at s_c = alpha / r_c; the global factors (rank r_max) are read at
s = alpha / r_max. FlexLoRA sums s_c B_c A_c directly. HetLoRA averages factors, so it first
brings each client's factors to the global scaling: B_c -> (s_c / s) B_c, A_c unchanged (A keeps
peft's init scale; s B' A = s_c B_c A_c), then pads and sums; a client receives the first r_c
ranks with B times s / s_c (``to_scaling``). With one rank for every client this is FedIT.
Averaging the raw factors instead would weigh a rank-r_c client's update by r_max / r_c too little.
"""

from __future__ import annotations

import numpy as np


def client_weights(num_samples: np.ndarray, uniform: bool = False) -> np.ndarray:
    """p_c: |D_c| / sum |D| (float64), or 1 / C with ``uniform``."""
    n = np.asarray(num_samples, dtype=np.float64)
    if n.ndim != 1 or n.size == 0 or (n <= 0).any():
        raise ValueError(f"client weights need positive sample counts, got {n}")
    w = np.ones_like(n) if uniform else n
    return w / w.sum()


def lora_delta(b: np.ndarray, a: np.ndarray, scaling: float, fan_in_fan_out: bool = False) -> np.ndarray:
    """s * B A in the base weight's layout: (d_out, d_in), or (d_in, d_out) for GPT-2's Conv1D."""
    delta = scaling * (np.asarray(b, np.float64) @ np.asarray(a, np.float64))
    return delta.T if fan_in_fan_out else delta


def weighted_sum(mats: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """sum_c p_c M_c in float64, clients in the order given; 2-D ``weights`` (C, rows) weigh row by row."""
    weights = np.asarray(weights, np.float64)
    if len(mats) != len(weights) or not mats:
        raise ValueError(f"{len(mats)} matrices for {len(weights)} weights")
    total = np.zeros(mats[0].shape, dtype=np.float64)
    for w, m in zip(weights, mats):
        m = np.asarray(m, np.float64)
        if w.ndim and w.shape[0] != m.shape[0]:
            raise ValueError(f"row weights for {w.shape[0]} rows, the matrix has {m.shape[0]}")
        total += (w.reshape(-1, *[1] * (m.ndim - 1)) if w.ndim else w) * m
    return total


def to_scaling(a: np.ndarray, b: np.ndarray, scaling: float, target: float) -> tuple[np.ndarray, np.ndarray]:
    """Factors at ``scaling`` re-expressed at ``target``: (A, B * scaling / target), the same s B A."""
    return a, b * (scaling / target)


def merged_delta(
    a_list: list[np.ndarray], b_list: list[np.ndarray], weights: np.ndarray, scalings: np.ndarray | float, fan_in_fan_out: bool
) -> np.ndarray:
    """The exact average of the clients' updates, sum p_c s_c B_c A_c, in the base weight's layout."""
    scalings = np.broadcast_to(np.asarray(scalings, np.float64), (len(a_list),))
    products = [lora_delta(b, a, s) for a, b, s in zip(a_list, b_list, scalings)]  # (d_out, d_in): row weights fit
    total = weighted_sum(products, weights)
    return total.T if fan_in_fan_out else total


def fedit(
    a_list: list[np.ndarray], b_list: list[np.ndarray], weights: np.ndarray, b_weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """FedIT: A and B averaged separately (FedAvg of the factors); B by ``b_weights`` (row weights) if given."""
    return weighted_sum(a_list, weights), weighted_sum(b_list, weights if b_weights is None else b_weights)


def flora(
    a_list: list[np.ndarray],
    b_list: list[np.ndarray],
    weights: np.ndarray,
    scaling: float,
    fan_in_fan_out: bool = False,
    b_weights: np.ndarray | None = None,
) -> np.ndarray:
    """FLoRA: stacking [p_1 B_1 ... p_C B_C] [A_1; ...; A_C] is s * sum p_c B_c A_c: the base weight's update.

    With row weights (``b_weights``) row i is s * sum_c w_ci B_c[i] A_c: each head over the clients that kept it.
    """
    return merged_delta(a_list, b_list, weights if b_weights is None else b_weights, scaling, fan_in_fan_out)


def fedex_lora(
    a_list: list[np.ndarray],
    b_list: list[np.ndarray],
    weights: np.ndarray,
    scaling: float,
    fan_in_fan_out: bool = False,
    b_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FedEx-LoRA: (A_mean, B_mean, residual); W0 + residual + s B_mean A_mean = W0 + s sum p_c B_c A_c.

    The means are FedIT's and the residual is FLoRA's exact update less s B_mean A_mean, over the same
    weights. With row weights (``b_weights``, each row summing to 1 or to 0) B_mean and the exact mean
    are taken row by row over those weights, A_mean over ``weights``; a row of zero weights has B_mean
    and residual 0.
    """
    a_mean, b_mean = fedit(a_list, b_list, weights, b_weights)
    exact = flora(a_list, b_list, weights, scaling, fan_in_fan_out, b_weights)
    return a_mean, b_mean, exact - lora_delta(b_mean, a_mean, scaling, fan_in_fan_out)


def zero_pad(a: np.ndarray, b: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """A (r x d_in) and B (d_out x r) padded with zero ranks to ``rank``."""
    r = a.shape[0]
    if b.shape[1] != r or r > rank:
        raise ValueError(f"cannot pad factors of ranks {r} and {b.shape[1]} to rank {rank}")
    a_pad = np.zeros((rank, a.shape[1]), dtype=np.float64)
    b_pad = np.zeros((b.shape[0], rank), dtype=np.float64)
    a_pad[:r], b_pad[:, :r] = a, b
    return a_pad, b_pad


def first_ranks(a: np.ndarray, b: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """What a client of rank ``rank`` receives: A's first rows and B's first columns."""
    return a[:rank], b[:, :rank]


def hetlora(
    a_list: list[np.ndarray],
    b_list: list[np.ndarray],
    weights: np.ndarray,
    rank: int,
    scalings: np.ndarray | float = 1.0,
    scaling: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """HetLoRA: every client's factors brought from its scaling s_c to the global ``scaling`` (``to_scaling``),
    zero-padded to ``rank`` (r_max), then sum p_c of A and of B: global factors read at ``scaling``."""
    scalings = np.broadcast_to(np.asarray(scalings, np.float64), (len(a_list),))
    padded = [zero_pad(*to_scaling(a, b, float(s), scaling), rank) for a, b, s in zip(a_list, b_list, scalings)]
    return weighted_sum([a for a, _ in padded], weights), weighted_sum([b for _, b in padded], weights)


def flexlora(
    a_list: list[np.ndarray],
    b_list: list[np.ndarray],
    weights: np.ndarray,
    scalings: np.ndarray | float,
    rank: int,
    scaling: float,
) -> tuple[np.ndarray, np.ndarray]:
    """FlexLoRA: rank-``rank`` factors (A, B) with ``scaling`` * B A = the truncated SVD of sum p_c s_c B_c A_c."""
    full = merged_delta(a_list, b_list, weights, scalings, fan_in_fan_out=False)
    u, sv, vt = np.linalg.svd(full, full_matrices=False)
    if rank > sv.size:
        raise ValueError(f"FlexLoRA rank {rank} exceeds the layer's smaller dimension {sv.size}")
    root = np.sqrt(sv[:rank] / scaling)
    return root[:, None] * vt[:rank], u[:, :rank] * root[None, :]


def fedsa_lora(a_list: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """FedSA-LoRA: only A is shared and averaged; B (and the task head) stay with each client."""
    return weighted_sum(a_list, weights)


def rolora_factor(round_: int) -> str:
    """RoLoRA's factor trained and averaged in round ``round_`` (from 1): "B" in odd rounds, "A" in even ones."""
    if round_ < 1:
        raise ValueError(f"rounds count from 1, got {round_}")
    return "B" if round_ % 2 == 1 else "A"
