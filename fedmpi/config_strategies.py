"""The ``strategy:`` section: one typed section per federated strategy, told apart by ``name``.

``StrategyConfig`` is the discriminated union the config tree holds; each strategy in
``fedmpi.strategies`` receives only its own member. Shared option blocks (the paper's head
pruning, the federated-LoRA weighting, per-client LoRA ranks) are base classes here.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from fedmpi.config_section import Section


class FedAvgConfig(Section):
    """B1: FedAvg over every trainable parameter (Eq. 5)."""

    name: Literal["fedavg"] = "fedavg"


class HeadPruningOptions(Section):
    """How the paper's head pruning chooses, weights and scores heads (Eq. 6-8); shared by ``head_pruning``
    and the ``head_pruning`` sub-section of the federated-LoRA strategies."""

    _key: ClassVar[str] = "strategy."  # where these keys live, for the messages
    sparsity: float = Field(0.9, ge=0, lt=1)  # share of a client's groups (heads) not uploaded
    pruning: Literal["importance", "random"] = "importance"
    mask_timing: Literal["post_train", "pre_train"] = "post_train"
    weighting: Literal["importance", "samples"] = "importance"
    # Eq. 6 options (README "The method"): which tokens' columns are zeroed, which model is scored,
    # how many leading queries of causal self-attention are skipped; and whether pruned heads are computed.
    importance_exclude: Literal["eos", "eos+bos", "special"] = "eos"
    score_on: Literal["training", "uploaded"] = "training"
    skip_first_queries: int = Field(0, ge=0)
    pruned_heads: Literal["frozen", "removed"] = "frozen"

    @model_validator(mode="after")
    def _weighting_needs_scores(self) -> HeadPruningOptions:
        k = self._key
        if self.pruning == "random" and self.weighting == "importance":
            raise ValueError(
                f"{k}weighting=importance needs {k}pruning=importance "
                f"(random pruning measures no importance); use {k}weighting=samples"
            )
        if self.pruned_heads == "removed" and self.mask_timing != "pre_train":
            raise ValueError(
                f"{k}pruned_heads=removed needs {k}mask_timing=pre_train: heads can only be left out of "
                "the forward when the mask is known before training"
            )
        if self.score_on == "uploaded" and self.mask_timing == "pre_train":
            raise ValueError(
                f"{k}score_on=uploaded scores the model after training, but {k}mask_timing=pre_train "
                "chooses the mask before it (from the received global model, in eval mode); use one of them"
            )
        return self


class HeadPruningConfig(HeadPruningOptions):
    """The paper's method (importance pruning, Eq. 7-8) and baseline B2 (random pruning)."""

    name: Literal["head_pruning"] = "head_pruning"
    eps: float = Field(1e-8, gt=0)


class LoraHeadPruningConfig(HeadPruningOptions):
    """``strategy.head_pruning`` of a federated-LoRA strategy: its clients prune heads the paper's way.

    Each client keeps its top (1 - sparsity) heads (or a random share) and uploads only their
    rows of B; the server combines each head's rows over the clients that kept it, weighted by
    their scores (Eq. 8, ``weighting: importance``) or by the strategy's p_c (``samples``), inside
    the strategy's own rule (``fedmpi/strategies/lora_pruning.py``).
    """

    _key: ClassVar[str] = "strategy.head_pruning."

    @model_validator(mode="after")
    def _heads_stay_in_the_forward(self) -> LoraHeadPruningConfig:
        if self.pruned_heads == "removed":
            raise ValueError(
                "strategy.head_pruning.pruned_heads=removed is not available with the federated-LoRA strategies "
                "(their groups add each LoRA module's A to the heads, and heads are removed by head id); "
                "use strategy.head_pruning.pruned_heads=frozen"
            )
        return self


class LayerFinetuningConfig(Section):
    """Layer finetuning (arXiv 2411.07826): each client trains the last n_c blocks its ``devices`` budgets allow."""

    name: Literal["layer_finetuning"] = "layer_finetuning"
    variant: Literal["blocks", "lora"] = "blocks"  # whole blocks (the paper) or only their LoRA adapters
    dtype_bytes: int = Field(4, ge=1)  # bytes per weight, gradient, optimizer state and activation
    # Model names (as model.name takes them); non-empty: before round 1 the run builds each, keeps the
    # one with the highest mean n_c over the device classes (fedmpi.budgets.choose_backbone), prints
    # the choice, and runs it as model.name (the resolved config records the chosen name).
    backbone_candidates: tuple[str, ...] = ()


class FedAraConfig(Section):
    """FedARA (arXiv 2501.14406): SVD adapters, a shrinking global rank budget, rank-0 modules pruned."""

    name: Literal["fedara"] = "fedara"
    initial_rank: int = Field(12, ge=1)  # r0 per module
    target_rank: float = Field(8.0, ge=0)  # mean rank per module at the end: b_T = modules x target_rank
    warmup_rounds: int | None = Field(None, ge=0)  # t_i; None: 10% of server.num_rounds
    final_rounds: int | None = Field(None, ge=0)  # t_f; None: 20% of server.num_rounds
    orth_reg_weight: float = Field(0.5, ge=0)  # gamma of the orthogonality penalty (peft's form)
    beta1: float = Field(0.85, gt=0, lt=1)  # sensitivity smoothing
    beta2: float = Field(0.85, gt=0, lt=1)  # uncertainty smoothing

    @model_validator(mode="after")
    def _target_below_initial(self) -> FedAraConfig:
        if self.target_rank > self.initial_rank:
            raise ValueError(f"strategy.target_rank ({self.target_rank}) must not exceed strategy.initial_rank ({self.initial_rank})")
        return self


class _LoraMeanConfig(Section):
    """The federated-LoRA strategies (fedmpi/strategies/lora_*.py): how clients are weighted."""

    weighting: Literal["samples", "uniform"] = "samples"  # p_c = |D_c| / sum |D|, or 1 / C
    # The paper's head pruning inside the strategy's rule (fedmpi/strategies/lora_pruning.py); None: off.
    head_pruning: LoraHeadPruningConfig | None = None


class FedITConfig(_LoraMeanConfig):
    """FedIT: A and B averaged separately (with the task head)."""

    name: Literal["fedit"] = "fedit"


class FFALoraConfig(_LoraMeanConfig):
    """FFA-LoRA: A frozen at its initialisation and never sent; B averaged."""

    name: Literal["ffa_lora"] = "ffa_lora"


class RoLoraConfig(_LoraMeanConfig):
    """RoLoRA: odd rounds train and average only B, even rounds only A."""

    name: Literal["rolora"] = "rolora"


class FLoraConfig(_LoraMeanConfig):
    """FLoRA: the exact mean s sum p_c B_c A_c goes into the frozen weight; adapters restart every round."""

    name: Literal["flora"] = "flora"


class FedExLoraConfig(_LoraMeanConfig):
    """FedEx-LoRA: FedIT's means plus the residual that makes the frozen weight exact."""

    name: Literal["fedex_lora"] = "fedex_lora"


class _RankedLoraConfig(_LoraMeanConfig):
    """Per-client LoRA ranks from device classes: rank ``ranks[i]`` for a share ``shares[i]`` of the clients."""

    ranks: tuple[int, ...] = (2, 4, 8)  # the largest must not exceed peft.lora.rank (the global rank)
    shares: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)
    _why_no_pruning: ClassVar[str]  # why head pruning does not combine with the method

    @model_validator(mode="after")
    def _classes(self) -> _RankedLoraConfig:
        if len(self.ranks) != len(self.shares) or not self.ranks:
            raise ValueError(f"strategy.ranks and strategy.shares need one share per rank, got {self.ranks} / {self.shares}")
        if min(self.ranks) < 1 or min(self.shares) < 0 or abs(sum(self.shares) - 1) > 1e-6:
            raise ValueError("strategy.ranks must be >= 1 and strategy.shares >= 0 summing to 1")
        if self.head_pruning is not None:
            raise ValueError(f"strategy.head_pruning does not combine with strategy.name={self.name}: {self._why_no_pruning}")
        return self


class HetLoraConfig(_RankedLoraConfig):
    """HetLoRA: zero-pad every client to the global rank, weighted sum; client c trains its first r_c ranks."""

    name: Literal["hetlora"] = "hetlora"
    _why_no_pruning: ClassVar[str] = (
        "its unit is the rank triplet (a column of B across every head) and a head's is a block of B's rows across "
        "every rank; the two cut each other, and the padded mean, which divides each rank by the weight of every "
        "client, defines no per-head restriction"
    )


class FlexLoraConfig(_RankedLoraConfig):
    """FlexLoRA: the exact mean of the clients' products, truncated by SVD; client c takes r_c ranks."""

    name: Literal["flexlora"] = "flexlora"
    _why_no_pruning: ClassVar[str] = (
        "the server's truncated SVD mixes the rows of every head, so a head's result could not be restricted to "
        "the clients that kept it"
    )


class FedSALoraConfig(_LoraMeanConfig):
    """FedSA-LoRA: only A is shared; every client keeps its B and task head (a per-client store on rank 0)."""

    name: Literal["fedsa_lora"] = "fedsa_lora"
    store: Literal["memory", "disk"] = "memory"  # disk: one .npy per client and version under store_dir
    store_dir: str | None = None

    @model_validator(mode="after")
    def _disk_needs_a_folder(self) -> FedSALoraConfig:
        if self.store == "disk" and not self.store_dir:
            raise ValueError("strategy.store=disk needs strategy.store_dir (a folder on a file system rank 0 can write)")
        if self.head_pruning is not None:
            raise ValueError(
                "strategy.head_pruning does not combine with strategy.name=fedsa_lora: B, the only factor heads own, "
                "stays on each client and is never uploaded, so there is nothing per head to prune or combine"
            )
        return self


# One section per strategy, told apart by ``name`` (fedmpi.strategies.STRATEGIES has the classes).
StrategyConfig = Annotated[
    FedAvgConfig | HeadPruningConfig | LayerFinetuningConfig | FedAraConfig | FedITConfig | FFALoraConfig | RoLoraConfig
    | FLoraConfig | FedExLoraConfig | HetLoraConfig | FlexLoraConfig | FedSALoraConfig,
    Field(discriminator="name"),
]


STRATEGY_NAMES: frozenset[str] = frozenset(
    c.model_fields["name"].default for c in StrategyConfig.__origin__.__args__  # type: ignore[attr-defined]
)


def strategy_names() -> tuple[str, ...]:
    """Every ``strategy.name`` the config accepts."""
    return tuple(sorted(STRATEGY_NAMES))
