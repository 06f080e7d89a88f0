"""Where each LoRA module's A and B lie in the flat trainable vector, and the groups built on them.

The federated-LoRA strategies (``fedmpi/lora_rules.py``) combine per-module factor
matrices; this module finds them: for every peft LoRA layer, the flat ranges of its A
(r x d_in) and B (d_out x r), its scaling alpha / r, whether its frozen weight is GPT-2's
transposed ``Conv1D`` layout (peft's ``fan_in_fan_out``) and the name of that weight.
It also builds the two kinds of groups those strategies mask:

- ``rank_groups``: one family per LoRA module, group i = row i of A and column i of B (a rank
  triplet without its singular value), for per-client ranks (HetLoRA, FlexLoRA);
- ``factor_groups``: two groups per LoRA module, its A and its B, for strategies that train
  or send only one factor (FFA-LoRA, RoLoRA, FedSA-LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedmpi.models.groups import GroupFamily, GroupMap
from fedmpi.models.params import TrainableLayout

ADAPTER = "default"  # peft's adapter name; fedmpi wraps one adapter


@dataclass(frozen=True)
class LoraFactors:
    module: str  # the LoRA layer's path in the peft-wrapped model
    a: slice  # flat range of A, (rank, d_in) row-major
    b: slice  # flat range of B, (d_out, rank) row-major
    rank: int
    d_in: int
    d_out: int
    scaling: float  # alpha / r
    fan_in_fan_out: bool  # the frozen weight is (d_in, d_out): GPT-2's Conv1D
    base_weight: str  # name of the frozen weight in model.named_parameters()

    def split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(A, B) of this module as views into ``flat``."""
        return flat[self.a].reshape(self.rank, self.d_in), flat[self.b].reshape(self.d_out, self.rank)


def lora_factors(model: torch.nn.Module, layout: TrainableLayout) -> tuple[LoraFactors, ...]:
    """Every LoRA layer of ``model`` (peft naming), in layout order."""
    found = []
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or ADAPTER not in lora_a:
            continue
        a_name, b_name = f"{name}.lora_A.{ADAPTER}.weight", f"{name}.lora_B.{ADAPTER}.weight"
        if a_name not in layout.names or b_name not in layout.names:
            raise ValueError(f"LoRA layer {name!r} is not trainable: its factors are not in the flat vector")
        rank, d_in = module.lora_A[ADAPTER].weight.shape
        d_out = module.lora_B[ADAPTER].weight.shape[0]
        fan_in_fan_out = bool(getattr(module, "fan_in_fan_out", False))
        found.append(
            LoraFactors(
                module=name, a=layout.slice_of(a_name), b=layout.slice_of(b_name), rank=int(rank), d_in=int(d_in),
                d_out=int(d_out), scaling=float(module.scaling[ADAPTER]), fan_in_fan_out=fan_in_fan_out,
                base_weight=f"{name}.base_layer.weight",
            )  # fmt: skip
        )
    if not found:
        raise ValueError("the model has no LoRA layers: the federated-LoRA strategies need LoRA adapters")
    return tuple(sorted(found, key=lambda f: f.a.start))


def rank_groups(factors: tuple[LoraFactors, ...], numel: int) -> GroupMap:
    """Group i of module m: A[i, :] and B[:, i] (HetLoRA's and FlexLoRA's unit)."""
    index = np.full(numel, -1, dtype=np.int32)
    families, first = [], 0
    for f in factors:
        ranks = np.arange(first, first + f.rank, dtype=np.int32)
        index[f.a] = np.repeat(ranks, f.d_in)  # A is (rank, d_in) row-major: row i is rank i
        index[f.b] = np.tile(ranks, f.d_out)  # B is (d_out, rank) row-major: column i is rank i
        families.append(GroupFamily(f.module, "triplet", f.rank, width=1))
        first += f.rank
    return GroupMap(tuple(families), index)


def factor_groups(factors: tuple[LoraFactors, ...], numel: int) -> GroupMap:
    """Group 2m is module m's A, group 2m + 1 its B (FFA-LoRA's, RoLoRA's and FedSA-LoRA's unit)."""
    index = np.full(numel, -1, dtype=np.int32)
    for m, f in enumerate(factors):
        index[f.a], index[f.b] = 2 * m, 2 * m + 1
    return GroupMap(tuple(GroupFamily(f.module, "factor", 2) for f in factors), index)


def factor_mask(factors: tuple[LoraFactors, ...], which: str) -> np.ndarray:
    """Group mask over ``factor_groups`` keeping only A's ("A") or only B's ("B")."""
    if which not in ("A", "B"):
        raise ValueError(f"a LoRA factor is 'A' or 'B', got {which!r}")
    mask = np.zeros(2 * len(factors), dtype=bool)
    mask[0 if which == "A" else 1 :: 2] = True
    return mask


def rank_mask(factors: tuple[LoraFactors, ...], rank: int) -> np.ndarray:
    """Group mask over ``rank_groups`` keeping each module's first ``rank`` ranks."""
    if rank < 1:
        raise ValueError(f"a client's LoRA rank must be >= 1, got {rank}")
    return np.concatenate([np.arange(f.rank) < rank for f in factors])


def truncated_view(params: np.ndarray, factors: tuple[LoraFactors, ...], rank: int) -> np.ndarray:
    """What a client of LoRA rank ``rank`` holds: ``params`` with every module's ranks >= ``rank`` set to 0."""
    view = params.copy()
    for f in factors:
        a, b = f.split(view)
        a[rank:], b[:, rank:] = 0, 0
    return view


def client_view(params: np.ndarray, factors: tuple[LoraFactors, ...], rank: int) -> np.ndarray:
    """What a client of LoRA rank ``rank`` holds when it trains at its own scaling alpha / rank.

    Every module's ranks >= ``rank`` are 0 (``truncated_view``) and B's first ranks are multiplied
    by (alpha / r_max) / (alpha / rank) = rank / r_max, so the client's weight W0 + (alpha / rank) B A
    is the global model's first ``rank`` ranks read at alpha / r_max (``lora_rules.to_scaling``).
    """
    view = truncated_view(params, factors, rank)
    for f in factors:
        _, b = f.split(view)
        b *= rank / f.rank
    return view


def client_scaling(f: LoraFactors, rank: int) -> float:
    """alpha / rank for module ``f`` (whose global scaling is alpha / f.rank)."""
    return f.scaling * f.rank / rank


def base_weights(model: torch.nn.Module, factors: tuple[LoraFactors, ...]) -> np.ndarray:
    """The frozen weights under the LoRA layers, flattened in factor order (float32 copy)."""
    params = dict(model.named_parameters())
    return np.concatenate([params[f.base_weight].detach().cpu().reshape(-1).numpy() for f in factors]).astype(np.float32)


def set_base_weights(model: torch.nn.Module, factors: tuple[LoraFactors, ...], flat: np.ndarray) -> None:
    """Overwrite the frozen weights under the LoRA layers (FLoRA and FedEx-LoRA move them)."""
    params = dict(model.named_parameters())
    pos = 0
    with torch.no_grad():
        for f in factors:
            weight = params[f.base_weight]
            weight.copy_(torch.from_numpy(flat[pos : pos + weight.numel()]).reshape(weight.shape))
            pos += weight.numel()
    if pos != flat.size:
        raise ValueError(f"frozen-weight buffer has {flat.size} values, the LoRA layers hold {pos}")


def base_slices(factors: tuple[LoraFactors, ...]) -> list[slice]:
    """Flat ranges of each module's frozen weight inside the ``base_weights`` buffer."""
    sizes = [f.d_in * f.d_out for f in factors]
    bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
