"""The typed, validated configuration tree: YAML files plus dotted command-line overrides.

Every setting of a run lives here, grouped by the component that reads it. Unknown keys,
wrong types and impossible values fail at start with a message that names the key; the
resolved tree is stored in the result file (``Config.to_yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class OutputConfig(_Section):
    dir: str = "results"
    name: str | None = None  # None: derived from the strategy, selection and a timestamp
    overwrite: bool = False  # replace an existing result file of the same name
    resume: bool = False  # continue run output.name from its last checkpoint (start it if there is none)


class DataConfig(_Section):
    source: str = "embedded"  # embedded | jsonl | 20newsgroups | e2e_nlg | multinli | xlsum
    path: str | None = None  # local folder for 20newsgroups / e2e_nlg (hub when None)
    train_file: str | None = None  # jsonl source
    eval_file: str | None = None
    input_field: str = "text"
    label_field: str = "label"
    target_field: str | None = None  # set for generation from jsonl
    strip_headers: bool = True
    num_train: int = Field(2000, ge=1)  # size of the embedded task
    num_eval: int = Field(400, ge=1)
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)
    max_length: int = Field(64, ge=4)
    max_target_length: int = Field(64, ge=2)
    num_clients: int = Field(100, ge=1)
    partition: Literal["iid", "dirichlet"] = "iid"
    dirichlet_alpha: float = Field(0.5, gt=0)


class ModelConfig(_Section):
    name: str = "minilm"  # packaged MiniLM, tiny-<arch>, or any Hugging Face name / local path
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"


class LoraConfig(_Section):
    rank: int = Field(16, ge=1)
    alpha: float | None = Field(None, gt=0)  # None: 2 * rank (method-spec default)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] | None = None  # None: the architecture's q, k, v


class ClientConfig(_Section):
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)  # the paper uses 5e-4 at batch 80; 2e-3 suits the small default batches
    num_epochs: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)


class ServerConfig(_Section):
    num_rounds: int = Field(5, ge=1)
    num_clients_per_round: int = Field(10, ge=1)
    lr: float = Field(1.0, gt=0)  # eta of Eq. 5 / Eq. 8
    selection: Literal["random", "loss"] = "random"
    eval_every: int = Field(1, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    eval_samples: int | None = Field(None, ge=1)  # a fixed seeded subset of the eval split; None: all of it
    trains_clients: bool = True  # False: rank 0 is a pure server (needs >= 2 ranks)


class FedAvgConfig(_Section):
    """B1: FedAvg over every trainable parameter (Eq. 5)."""

    name: Literal["fedavg"] = "fedavg"


class HeadPruningConfig(_Section):
    """The paper's method (importance pruning, Eq. 7-8) and baseline B2 (random pruning)."""

    name: Literal["head_pruning"] = "head_pruning"
    sparsity: float = Field(0.9, ge=0, lt=1)  # share of a client's groups (heads) not uploaded
    pruning: Literal["importance", "random"] = "importance"
    mask_timing: Literal["post_train", "pre_train"] = "post_train"
    weighting: Literal["importance", "samples"] = "importance"
    eps: float = Field(1e-8, gt=0)

    @model_validator(mode="after")
    def _weighting_needs_scores(self) -> HeadPruningConfig:
        if self.pruning == "random" and self.weighting == "importance":
            raise ValueError(
                "strategy.weighting=importance needs strategy.pruning=importance "
                "(random pruning measures no importance); use strategy.weighting=samples"
            )
        return self


# One section per strategy, told apart by ``name`` (fedmpi.strategies.STRATEGIES has the classes).
StrategyConfig = Annotated[FedAvgConfig | HeadPruningConfig, Field(discriminator="name")]


class RuntimeConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(None, ge=1)  # None: the node's cores / ranks on the node
    comm: Literal["auto", "mpi", "local"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast forward; trainable state stays float32
    deterministic: bool = False  # torch.use_deterministic_algorithms and a fixed cuBLAS workspace
    clients_per_step: int = Field(1, ge=1)  # clients a rank trains together in one forward/backward


class Config(_Section):
    seed: int = 0
    output: OutputConfig = OutputConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    client: ClientConfig = ClientConfig()
    server: ServerConfig = ServerConfig()
    strategy: StrategyConfig = FedAvgConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.server.num_clients_per_round > self.data.num_clients:
            raise ValueError(
                f"server.num_clients_per_round ({self.server.num_clients_per_round}) must not exceed "
                f"data.num_clients ({self.data.num_clients})"
            )
        if self.output.resume and not self.output.name:
            raise ValueError("output.resume=true needs output.name: the run to continue")
        if self.output.resume and self.output.overwrite:
            raise ValueError("output.resume and output.overwrite exclude each other")
        if self.runtime.clients_per_step > 1 and self.lora.dropout > 0:
            raise ValueError(
                f"runtime.clients_per_step={self.runtime.clients_per_step} trains with dropout off; "
                f"set lora.dropout=0 (it is {self.lora.dropout}) or runtime.clients_per_step=1"
            )
        if self.data.source == "jsonl" and not (self.data.train_file and self.data.eval_file):
            raise ValueError("data.source=jsonl needs data.train_file and data.eval_file")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


_STRATEGY_NAMES = frozenset(
    c.model_fields["name"].default for c in StrategyConfig.__origin__.__args__  # type: ignore[attr-defined]
)


def strategy_names() -> tuple[str, ...]:
    """Every ``strategy.name`` the config accepts."""
    return tuple(sorted(_STRATEGY_NAMES))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML, so 3 -> int, null -> None)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def _set_dotted(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        # A discriminated union puts the chosen tag into the location (strategy.head_pruning.x): drop it.
        loc = [p for i, p in enumerate(err["loc"]) if not (i == 1 and err["loc"][0] == "strategy" and p in _STRATEGY_NAMES)]
        key = ".".join(str(p) for p in loc) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            if err["loc"][0] == "strategy" and len(err["loc"]) > 1 and err["loc"][1] in _STRATEGY_NAMES:
                msg = f"unknown key for strategy.name={err['loc'][1]}"
        lines.append(f"{key}: {msg}" if err["loc"] else msg)
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build the config: defaults < YAML file < overrides. Raises ConfigError naming the key."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        tree = loaded or {}
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    strategy = tree.get("strategy")
    if isinstance(strategy, dict) and "name" not in strategy:
        strategy["name"] = FedAvgConfig().name  # the default strategy, so its keys are checked
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
