"""The federated-LoRA rules applied to the flat trainable vector: the server side of the LoRA strategies.

Each function takes the global vector, the clients' dense deltas (client id order, zeros
where a client sent nothing) and their weights p_c, rebuilds every client's factors per
LoRA module, applies the rule from ``fedmpi/lora_rules.py`` and returns the next global
vector. Elements outside every LoRA factor (the task head) follow FedAvg (Eq. 5) with
the same weights. FLoRA and FedEx-LoRA also return the update of the frozen weights, as
one flat buffer in ``base_weights`` order.

With head pruning (``heads``: ``HeadWeights``) the elements a head owns (its rows of B) are
combined over the clients that kept the head, with that head's weights; everything else
(A, the task head) keeps p_c. A head no client kept keeps its B rows and gets no frozen-weight
update (FLoRA, FedEx-LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi import lora_rules
from fedmpi.models.lora_factors import LoraFactors, base_slices, client_scaling, client_view


@dataclass(frozen=True, eq=False)
class HeadWeights:
    """Head pruning's weights on the server: (C, H), each head's column over the clients that kept it.

    ``weights[c, h]`` is alpha_hc / sum_c' alpha_hc' (Eq. 8 scores, or p_c), 0 where client c did not
    send head h; a column nobody sent is all 0. ``head_index`` is the head of every flat element
    (-1: no head, so p_c).
    """

    weights: np.ndarray
    head_index: np.ndarray

    def elements(self, c: int, p_c: float) -> np.ndarray:
        """Client c's weight of every flat element."""
        return np.append(self.weights[c], p_c)[self.head_index]  # index -1 picks p_c

    def rows(self, f: LoraFactors) -> np.ndarray:
        """(C, d_out): every client's weight of each row of module ``f``'s B (its head's weight)."""
        heads = self.head_index[f.b].reshape(f.d_out, f.rank)[:, 0]
        if (heads < 0).any():
            raise ValueError(f"LoRA module {f.module!r} has rows of B no attention head owns: head pruning cannot weigh them")
        return self.weights[:, heads]


def mean_delta(deltas: list[np.ndarray], weights: np.ndarray, heads: HeadWeights | None = None) -> np.ndarray:
    """sum_c p_c delta_c in float64 (FedAvg's combined update; FedIT, FFA-LoRA, RoLoRA, FedSA's A);
    with ``heads``, head-owned elements by their head's weights."""
    if heads is None:
        return lora_rules.weighted_sum(deltas, weights)
    total = np.zeros(deltas[0].shape, dtype=np.float64)
    for c, (w, d) in enumerate(zip(weights, deltas)):
        total += heads.elements(c, float(w)) * d
    return total


def _non_factor(factors: tuple[LoraFactors, ...], numel: int) -> np.ndarray:
    mask = np.ones(numel, dtype=bool)
    for f in factors:
        mask[f.a] = mask[f.b] = False
    return mask


def _with_fedavg_rest(params: np.ndarray, factors, deltas, weights, out: np.ndarray) -> np.ndarray:
    rest = _non_factor(factors, params.size)
    out[rest] = params[rest] + mean_delta([d[rest] for d in deltas], weights)
    return out


def _ranked_clients(params, factors, deltas, ranks) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's trained vector: the ``client_view`` it started from (its rank, its scaling) plus its delta."""
    views = [client_view(params, factors, int(r)).astype(np.float64) + d for r, d in zip(ranks, deltas)]
    return views, [np.array([client_scaling(f, int(r)) for r in ranks]) for f in factors]


def hetlora(
    params: np.ndarray, factors: tuple[LoraFactors, ...], deltas: list[np.ndarray], weights: np.ndarray, ranks: np.ndarray
) -> np.ndarray:
    """HetLoRA: client c's first r_c ranks, at the global scaling, zero-padded and summed with p_c."""
    out = params.astype(np.float64)
    views, scalings = _ranked_clients(params, factors, deltas, ranks)
    for f, s_c in zip(factors, scalings):
        split = [lora_rules.first_ranks(*f.split(v), int(r)) for v, r in zip(views, ranks)]
        a, b = lora_rules.hetlora([s[0] for s in split], [s[1] for s in split], weights, f.rank, s_c, f.scaling)
        out[f.a], out[f.b] = a.reshape(-1), b.reshape(-1)
    return _with_fedavg_rest(params, factors, deltas, weights, out).astype(np.float32)


def flexlora(
    params: np.ndarray, factors: tuple[LoraFactors, ...], deltas: list[np.ndarray], weights: np.ndarray, ranks: np.ndarray
) -> np.ndarray:
    """FlexLoRA: the exact mean of the clients' products s_c B_c A_c (s_c = alpha / r_c), truncated by SVD."""
    out = params.astype(np.float64)
    views, scalings = _ranked_clients(params, factors, deltas, ranks)
    for f, s_c in zip(factors, scalings):
        split = [lora_rules.first_ranks(*f.split(v), int(r)) for v, r in zip(views, ranks)]
        a, b = lora_rules.flexlora([s[0] for s in split], [s[1] for s in split], weights, s_c, f.rank, f.scaling)
        out[f.a], out[f.b] = a.reshape(-1), b.reshape(-1)
    return _with_fedavg_rest(params, factors, deltas, weights, out).astype(np.float32)


def flora(
    params: np.ndarray,
    factors: tuple[LoraFactors, ...],
    deltas: list[np.ndarray],
    weights: np.ndarray,
    fresh_a: list[np.ndarray],
    heads: HeadWeights | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """FLoRA: (next vector, frozen-weight update); the adapters restart from B = 0 and ``fresh_a``."""
    out = params.astype(np.float64)
    update = np.zeros(sum(f.d_in * f.d_out for f in factors), dtype=np.float64)
    clients = [params.astype(np.float64) + d for d in deltas]
    for f, where, a_new in zip(factors, base_slices(factors), fresh_a):
        split = [f.split(c) for c in clients]
        rows = None if heads is None else heads.rows(f)
        merged = lora_rules.flora([s[0] for s in split], [s[1] for s in split], weights, f.scaling, f.fan_in_fan_out, rows)
        update[where] = merged.reshape(-1)
        out[f.a], out[f.b] = a_new.reshape(-1), 0.0
    return _with_fedavg_rest(params, factors, deltas, weights, out).astype(np.float32), update


def fedex_lora(
    params: np.ndarray,
    factors: tuple[LoraFactors, ...],
    deltas: list[np.ndarray],
    weights: np.ndarray,
    heads: HeadWeights | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """FedEx-LoRA: (FedIT's next vector, the residual that makes the frozen weight exact)."""
    out = params.astype(np.float64) + mean_delta(deltas, weights, heads)
    update = np.zeros(sum(f.d_in * f.d_out for f in factors), dtype=np.float64)
    clients = [params.astype(np.float64) + d for d in deltas]
    for f, where in zip(factors, base_slices(factors)):
        split = [f.split(c) for c in clients]
        rows = None if heads is None else heads.rows(f)
        _, _, residual = lora_rules.fedex_lora(
            [s[0] for s in split], [s[1] for s in split], weights, f.scaling, f.fan_in_fan_out, rows
        )
        update[where] = residual.reshape(-1)
    return out.astype(np.float32), update


def lora_init_a(factors: tuple[LoraFactors, ...], rng: np.random.Generator) -> list[np.ndarray]:
    """Fresh A's drawn as peft draws them (Kaiming uniform, a = sqrt(5): U(-1/sqrt(d_in), 1/sqrt(d_in)))."""
    return [rng.uniform(-1.0, 1.0, size=(f.rank, f.d_in)) / np.sqrt(f.d_in) for f in factors]
