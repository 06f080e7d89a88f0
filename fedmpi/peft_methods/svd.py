"""SVD-form adapters (peft's AdaLoRA layers) as a PEFT method: FedARA's parameterisation.

dW = P diag(lambda) Q on each target (the architecture's q, k, v by default), initial rank
r0, with peft's orthogonality penalty added to the loss (``fedmpi.models.svd_adapters``).
Head groups: head h owns P's rows in its block, as LoRA's B (``fedmpi.peft_methods.lora``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel

from fedmpi.models.arch import arch_spec
from fedmpi.models.groups import GroupMap
from fedmpi.models.params import TrainableLayout
from fedmpi.models.svd_adapters import wrap_with_svd_adapters
from fedmpi.peft_methods.lora import lora_head_groups


@dataclass(frozen=True)
class SvdAdapters:
    initial_rank: int = 12
    alpha: float | None = None  # None: 2 * r0
    dropout: float = 0.05
    orth_reg_weight: float = 0.5
    target_modules: tuple[str, ...] | None = None
    name: str = "svd"

    def wrap(self, backbone: PreTrainedModel, *, kind: str, task_head: list[str] | None, seed: int) -> nn.Module:
        spec = arch_spec(backbone.config.model_type)
        targets = self.target_modules or (spec.qkv_targets if spec else None)
        if not targets:
            raise ValueError(f"no default adapter targets for {backbone.config.model_type!r}; set peft.lora.target_modules")
        return wrap_with_svd_adapters(
            backbone, kind=kind, targets=list(targets), initial_rank=self.initial_rank,
            alpha=float(self.alpha if self.alpha is not None else 2 * self.initial_rank), dropout=self.dropout,
            orth_reg_weight=self.orth_reg_weight, task_head=task_head, seed=seed,
        )  # fmt: skip

    def head_groups(self, model: nn.Module, layout: TrainableLayout) -> GroupMap:
        return lora_head_groups(model, layout)  # P is peft's lora_B; Q (lora_A) and lambda (lora_E) are -1
