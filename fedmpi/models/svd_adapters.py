"""SVD-form adapters (peft's AdaLoRA layers) for FedARA: wrapping, rank-triplet groups, sensitivity, module pruning.

peft's ``SVDLinear`` holds dW = P diag(lambda) Q as ``lora_B`` (P, d_out x r0),
``lora_E`` (lambda, r0 x 1, initialised to 0) and ``lora_A`` (Q, r0 x d_in), scaled by
alpha / r0; ``AdaLoraModel.forward`` adds the orthogonality penalty to the loss:
``orth_reg_weight * mean over every lora_A and lora_B of ||A A^T - I||_F`` (resp.
``||B^T B - I||_F``) -- the Frobenius norm itself, not its square as the FedARA/AdaLoRA
papers write it; fedmpi keeps peft's form. What peft does not have, because peft allocates
ranks on one machine, is here: triplet i of a module (P's column i, lambda_i, Q's row i) as
a parameter group; the clients' smoothed sensitivity per triplet; and switching a module
whose triplets are all masked out of the forward and backward (peft's ``enable_adapters``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from peft import AdaLoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.adalora import SVDLinear
from torch import nn
from transformers import PreTrainedModel

from fedmpi.models.groups import GroupFamily, GroupMap
from fedmpi.models.params import TrainableLayout
from fedmpi.rank_allocation import DEFAULT_BETA, smooth_sensitivity, triplet_scores

ADAPTER = "default"  # peft's adapter name
_FACTORS = ("lora_A", "lora_E", "lora_B")


def wrap_with_svd_adapters(
    backbone: PreTrainedModel,
    *,
    kind: str,
    targets: list[str],
    initial_rank: int,
    alpha: float,
    dropout: float,
    orth_reg_weight: float,
    task_head: list[str] | None,
    seed: int,
) -> PeftModel:
    """``backbone`` with an AdaLoRA ``SVDLinear`` of rank ``initial_rank`` on each target.

    peft's own RankAllocator is left unused (``total_step=1`` only satisfies its config
    check): in FedARA the server allocates ranks between rounds.
    """
    config = AdaLoraConfig(
        task_type=TaskType.SEQ_CLS if kind == "classification" else TaskType.SEQ_2_SEQ_LM,
        init_r=initial_rank,
        target_r=initial_rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        orth_reg_weight=orth_reg_weight,
        target_modules=list(targets),
        modules_to_save=None if task_head is None else list(task_head),
        total_step=1,
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(backbone, config)
    if not svd_modules(model):
        raise ValueError(f"AdaLoRA matched no module of {targets}: check the target modules")
    return model


def svd_modules(model: nn.Module) -> dict[str, SVDLinear]:
    """Every SVD adapter module by path, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SVDLinear)}


def _factor_of(param_name: str) -> tuple[str, str] | None:
    """(module path, factor) for ``<module>.lora_{A,E,B}.default``."""
    for factor in _FACTORS:
        marker = f".{factor}.{ADAPTER}"
        if param_name.endswith(marker):
            return param_name[: -len(marker)], factor
    return None


def triplet_groups(model: nn.Module, layout: TrainableLayout) -> GroupMap:
    """One family per SVD module, one group per rank triplet: Q's row i, lambda_i and P's column i."""
    modules = svd_modules(model)
    families = tuple(
        GroupFamily(name=name, kind="triplet", num_groups=m.r[ADAPTER]) for name, m in modules.items()
    )
    first = dict(zip(modules, np.cumsum([0] + [f.num_groups for f in families])))
    group_index = np.full(layout.numel, -1, dtype=np.int32)
    for name, shape, start in zip(layout.names, layout.shapes, layout.offsets[:-1]):
        owner = _factor_of(name)
        if owner is None:
            continue
        module, factor = owner
        rank = modules[module].r[ADAPTER]
        local = np.arange(rank, dtype=np.int32)
        # lora_A (r, d_in) and lora_E (r, 1): row i is triplet i; lora_B (d_out, r): column i.
        ids = np.repeat(local, shape[1]) if factor != "lora_B" else np.tile(local, shape[0])
        group_index[start : start + ids.size] = first[module] + ids
    return GroupMap(families=families, group_index=group_index)


class TripletSensitivity:
    """A client's smoothed sensitivity of its SVD factors during local training, reduced per triplet.

    Clients keep no state between rounds, so I and U start at 0 for every client-round and
    run over its local steps. ``update`` goes after each ``backward`` (peft's ``update_ipt``
    order); a factor without a gradient (frozen, or a pruned module) counts as s = 0.
    """

    def __init__(self, model: nn.Module, beta1: float = DEFAULT_BETA, beta2: float = DEFAULT_BETA) -> None:
        self.beta1, self.beta2 = beta1, beta2
        self.modules = svd_modules(model)
        self.reset()

    def reset(self) -> None:
        self._state: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def update(self) -> None:
        for name, m in self.modules.items():
            for factor in _FACTORS:
                p = getattr(m, factor)[ADAPTER]
                s = (p * p.grad).abs() if p.grad is not None else torch.zeros_like(p)
                smoothed, uncertainty = self._state.get((name, factor), (torch.zeros_like(p), torch.zeros_like(p)))
                self._state[(name, factor)] = smooth_sensitivity(smoothed, uncertainty, s, self.beta1, self.beta2)

    def scores(self) -> np.ndarray:
        """float32 per global triplet (module order, then rank index): AdaLoRA's triplet score."""
        out = []
        for name, m in self.modules.items():
            element = {}
            for factor in _FACTORS:
                if (name, factor) in self._state:
                    smoothed, uncertainty = self._state[(name, factor)]
                    element[factor] = (smoothed * uncertainty).double().cpu().numpy()
                else:
                    element[factor] = np.zeros(tuple(getattr(m, factor)[ADAPTER].shape))
            out.append(triplet_scores(element["lora_A"], element["lora_E"], element["lora_B"]))
        return np.concatenate(out).astype(np.float32)


def zero_rank_modules(groups: GroupMap, triplet_mask: np.ndarray) -> list[str]:
    """Names of the SVD modules all of whose triplets the mask drops."""
    offsets = groups.offsets
    mask = np.asarray(triplet_mask, dtype=bool)
    return [f.name for f, a, b in zip(groups.families, offsets[:-1], offsets[1:]) if not mask[a:b].any()]


class AdapterCalls:
    """Counts, per SVD module, the forwards that ran its adapter branch (``with`` block only).

    A forward hook on the module's ``lora_dropout`` entry, which peft's ``SVDLinear.forward``
    calls only on the adapter branch (never when the adapters are disabled): a module whose
    count stays 0 was left out of every forward, so it also got no backward.
    """

    def __init__(self, model: nn.Module) -> None:
        self._modules = svd_modules(model)
        self.counts = dict.fromkeys(self._modules, 0)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> AdapterCalls:
        for name, m in self._modules.items():
            self._handles.append(m.lora_dropout[ADAPTER].register_forward_hook(self._counter(name)))
        return self

    def _counter(self, name: str):
        def hook(*_: object) -> None:
            self.counts[name] += 1

        return hook

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def never_ran(self) -> list[str]:
        return [name for name, n in self.counts.items() if n == 0]


@contextmanager
def modules_pruned(model: nn.Module, names: list[str]) -> Iterator[None]:
    """Within the block, the adapters of ``names`` are off: their forward is the base layer alone
    and their factors get no gradient (FedARA's module pruning); everything is restored after."""
    modules = svd_modules(model)
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"not SVD adapter modules: {missing[:3]}")
    saved = {n: {f: getattr(modules[n], f)[ADAPTER].requires_grad for f in _FACTORS} for n in names}
    for n in names:
        modules[n].enable_adapters(False)
    try:
        yield
    finally:
        for n in names:
            modules[n].enable_adapters(True)
            for f, flag in saved[n].items():
                getattr(modules[n], f)[ADAPTER].requires_grad_(flag)
