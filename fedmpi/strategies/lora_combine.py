"""The federated-LoRA rules applied to the flat trainable vector: the server side of the LoRA strategies.

Each function takes the global vector, the clients' dense deltas (client id order, zeros
where a client sent nothing) and their weights p_c, rebuilds every client's factors per
LoRA module, applies the rule from ``fedmpi/lora_rules.py`` and returns the next global
vector. Elements outside every LoRA factor (the task head) follow FedAvg (Eq. 5) with
the same weights. FLoRA and FedEx-LoRA also return the update of the frozen weights, as
one flat buffer in ``base_weights`` order.
"""

from __future__ import annotations

import numpy as np

from fedmpi import lora_rules
from fedmpi.models.lora_factors import LoraFactors, base_slices, truncated_view


def mean_delta(deltas: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """sum_c p_c delta_c in float64 (FedAvg's combined update; FedIT, FFA-LoRA, RoLoRA, FedSA's A)."""
    return lora_rules.weighted_sum(deltas, weights)


def _non_factor(factors: tuple[LoraFactors, ...], numel: int) -> np.ndarray:
    mask = np.ones(numel, dtype=bool)
    for f in factors:
        mask[f.a] = mask[f.b] = False
    return mask


def _with_fedavg_rest(params: np.ndarray, factors, deltas, weights, out: np.ndarray) -> np.ndarray:
    rest = _non_factor(factors, params.size)
    out[rest] = params[rest] + mean_delta([d[rest] for d in deltas], weights)
    return out


def hetlora(
    params: np.ndarray, factors: tuple[LoraFactors, ...], deltas: list[np.ndarray], weights: np.ndarray, ranks: np.ndarray
) -> np.ndarray:
    """HetLoRA: client c trained ``truncated_view(params, r_c)``; zero-pad its factors and sum p_c."""
    out = params.astype(np.float64)
    views = [truncated_view(params, factors, int(r)).astype(np.float64) + d for r, d in zip(ranks, deltas)]
    for f in factors:
        split = [lora_rules.first_ranks(*f.split(v), int(r)) for v, r in zip(views, ranks)]
        a, b = lora_rules.hetlora([s[0] for s in split], [s[1] for s in split], weights, f.rank)
        out[f.a], out[f.b] = a.reshape(-1), b.reshape(-1)
    return _with_fedavg_rest(params, factors, deltas, weights, out).astype(np.float32)


def flexlora(
    params: np.ndarray, factors: tuple[LoraFactors, ...], deltas: list[np.ndarray], weights: np.ndarray, ranks: np.ndarray
) -> np.ndarray:
    """FlexLoRA: the exact mean of the clients' products s B_c A_c, truncated by SVD to the global rank."""
    out = params.astype(np.float64)
    views = [truncated_view(params, factors, int(r)).astype(np.float64) + d for r, d in zip(ranks, deltas)]
    for f in factors:
        split = [lora_rules.first_ranks(*f.split(v), int(r)) for v, r in zip(views, ranks)]
        a, b = lora_rules.flexlora([s[0] for s in split], [s[1] for s in split], weights, f.scaling, f.rank, f.scaling)
        out[f.a], out[f.b] = a.reshape(-1), b.reshape(-1)
    return _with_fedavg_rest(params, factors, deltas, weights, out).astype(np.float32)


def flora(
    params: np.ndarray,
    factors: tuple[LoraFactors, ...],
    deltas: list[np.ndarray],
    weights: np.ndarray,
    fresh_a: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """FLoRA: (next vector, frozen-weight update); the adapters restart from B = 0 and ``fresh_a``."""
    out = params.astype(np.float64)
    update = np.zeros(sum(f.d_in * f.d_out for f in factors), dtype=np.float64)
    clients = [params.astype(np.float64) + d for d in deltas]
    for f, where, a_new in zip(factors, base_slices(factors), fresh_a):
        split = [f.split(c) for c in clients]
        merged = lora_rules.flora([s[0] for s in split], [s[1] for s in split], weights, f.scaling, f.fan_in_fan_out)
        update[where] = merged.reshape(-1)
        out[f.a], out[f.b] = a_new.reshape(-1), 0.0
    return _with_fedavg_rest(params, factors, deltas, weights, out).astype(np.float32), update


def fedex_lora(
    params: np.ndarray, factors: tuple[LoraFactors, ...], deltas: list[np.ndarray], weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """FedEx-LoRA: (FedIT's next vector, the residual that makes the frozen weight exact)."""
    out = params.astype(np.float64) + mean_delta(deltas, weights)
    update = np.zeros(sum(f.d_in * f.d_out for f in factors), dtype=np.float64)
    clients = [params.astype(np.float64) + d for d in deltas]
    for f, where in zip(factors, base_slices(factors)):
        split = [f.split(c) for c in clients]
        _, _, residual = lora_rules.fedex_lora([s[0] for s in split], [s[1] for s in split], weights, f.scaling, f.fan_in_fan_out)
        update[where] = residual.reshape(-1)
    return out.astype(np.float32), update


def lora_init_a(factors: tuple[LoraFactors, ...], rng: np.random.Generator) -> list[np.ndarray]:
    """Fresh A's drawn as peft draws them (Kaiming uniform, a = sqrt(5): U(-1/sqrt(d_in), 1/sqrt(d_in)))."""
    return [rng.uniform(-1.0, 1.0, size=(f.rank, f.d_in)) / np.sqrt(f.d_in) for f in factors]
