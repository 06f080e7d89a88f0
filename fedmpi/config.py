"""The typed, validated configuration tree: YAML files plus dotted command-line overrides.

Every setting of a run lives here, grouped by the component that reads it; the ``strategy:``
section's per-strategy members live in ``fedmpi.config_strategies`` and ``devices:`` in
``fedmpi.devices``, and both are importable from here too. Unknown keys, wrong types and
impossible values fail at start with a message that names the key; the resolved tree is
stored in the result file (``Config.to_yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from fedmpi.config_section import Section
from fedmpi.config_strategies import (
    STRATEGY_NAMES,
    FedAraConfig,
    FedAvgConfig,
    FedExLoraConfig,
    FedITConfig,
    FedSALoraConfig,
    FFALoraConfig,
    FLoraConfig,
    FlexLoraConfig,
    HeadPruningConfig,
    HeadPruningOptions,
    HetLoraConfig,
    LayerFinetuningConfig,
    LoraHeadPruningConfig,
    RoLoraConfig,
    StrategyConfig,
    strategy_names,
)
from fedmpi.devices import DevicesConfig
from fedmpi.selection import SELECTIONS

# The strategy sections are part of this module's public face (fedmpi.strategies and the tests import them from here).
__all__ = [
    "BATCHED_STRATEGIES", "ClientConfig", "Config", "ConfigError", "DataConfig", "DevicesConfig", "FedAraConfig",
    "FedAvgConfig", "FedExLoraConfig", "FedITConfig", "FedSALoraConfig", "FFALoraConfig", "FLoraConfig",
    "FlexLoraConfig", "FullConfig", "HeadPruningConfig", "HeadPruningOptions", "HetLoraConfig", "Ia3Config",
    "LayerFinetuningConfig", "LoraConfig", "LoraHeadPruningConfig", "ModelConfig", "OutputConfig", "PeftConfig",
    "RoLoraConfig", "RuntimeConfig", "STRATEGY_NAMES", "ServerConfig", "StrategyConfig", "VirtualTokensConfig",
    "load_config", "parse_override", "strategy_names",
]  # fmt: skip


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the offending key."""


class OutputConfig(Section):
    dir: str = "results"
    name: str | None = None  # None: derived from the strategy, selection and a timestamp
    overwrite: bool = False  # replace an existing result file of the same name
    resume: bool = False  # continue run output.name from its last checkpoint (start it if there is none)


    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        if name is not None and (not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith(".")):
            raise ValueError(f"{name!r} must be a plain file name (no path separators, not starting with '.'); use output.dir for the folder")
        return name


class DataConfig(Section):
    # = the registered data.SOURCES (tests/test_config.py keeps them equal)
    source: Literal["embedded", "jsonl", "20newsgroups", "e2e_nlg", "multinli", "sick", "xlsum"] = "embedded"
    path: str | None = None  # local folder for 20newsgroups / e2e_nlg / multinli / sick / xlsum (hub when None)
    train_file: str | None = None  # jsonl source
    eval_file: str | None = None
    input_field: str = "text"
    pair_field: str | None = None  # jsonl: second text of a sentence pair (e.g. the NLI hypothesis)
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


class ModelConfig(Section):
    name: str = "minilm"  # packaged MiniLM, tiny-<arch>, or any Hugging Face name / local path
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"


class LoraConfig(Section):
    rank: int = Field(16, ge=1)
    alpha: float | None = Field(None, gt=0)  # None: 2 * rank (method-spec default)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] | None = None  # None: the architecture's q, k, v


class Ia3Config(Section):
    target_modules: tuple[str, ...] | None = None  # None: peft's defaults (k, v and the FFN output)
    feedforward_modules: tuple[str, ...] | None = None  # None: peft's defaults


class VirtualTokensConfig(Section):
    num_virtual_tokens: int = Field(20, ge=1)  # Tp (the paper's tables fit 20)


class FullConfig(Section):
    frozen_modules: tuple[str, ...] = ()  # module names whose parameters stay frozen (e.g. [shared])


class PeftConfig(Section):
    method: Literal["lora", "ia3", "prefix", "prompt", "full"] = "lora"  # prefix = P-tuning v2
    lora: LoraConfig = LoraConfig()
    ia3: Ia3Config = Ia3Config()
    prefix: VirtualTokensConfig = VirtualTokensConfig()
    prompt: VirtualTokensConfig = VirtualTokensConfig()
    full: FullConfig = FullConfig()


class ClientConfig(Section):
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)  # the paper uses 5e-4 at batch 80; 2e-3 suits the small default batches
    num_epochs: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    prox_mu: float = Field(0.0, ge=0)  # FedProx: mu/2 ||w - w_global||^2 added to the local loss; 0 = off


class ServerConfig(Section):
    num_rounds: int = Field(5, ge=1)
    num_clients_per_round: int = Field(10, ge=1)
    lr: float = Field(1.0, gt=0)  # eta of Eq. 5 / Eq. 8, and every server optimizer's step size
    # Reddi et al. 2021 (fedmpi/server_optim.py): sgd is Eq. 5 / Eq. 8 itself; the others step on
    # the combined update as a pseudo-gradient and keep their state in the checkpoint.
    optimizer: Literal["sgd", "avgm", "adagrad", "adam", "yogi"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)  # avgm
    beta1: float = Field(0.9, ge=0, lt=1)  # adagrad, adam, yogi
    beta2: float = Field(0.99, ge=0, lt=1)  # adam, yogi
    tau: float = Field(1e-3, gt=0)  # adaptivity: m / (sqrt(v) + tau)
    bias_correction: bool = True  # adam, yogi: Kingma's m/(1-b1^t), v/(1-b2^t); false: Reddi's Algorithm 2
    selection: str = "random"  # a name in fedmpi.selection.SELECTIONS: random | loss | cyclic
    eval_every: int = Field(1, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    eval_samples: int | None = Field(None, ge=1)  # a fixed seeded subset of the eval split; None: all of it
    # What the evaluated examples stand for: themselves (global), or the label mix of each of the latest
    # round's clients (personal: fedmpi.evaluation.LabelMix; classification only, generation is always
    # global). None: the strategy's default (personal for FedSA-LoRA's per-client models, else global).
    evaluation: Literal["global", "personal"] | None = None
    trains_clients: bool = True  # False: rank 0 is a pure server (needs >= 2 ranks)
    on_nonfinite: Literal["skip", "fail"] = "skip"  # a client update with NaN/inf: rejected, or ends the run

    @field_validator("selection")
    @classmethod
    def _known_selection(cls, name: str) -> str:
        if name not in SELECTIONS:
            raise ValueError(f"unknown selection rule {name!r}; known: {', '.join(sorted(SELECTIONS))}")
        return name


class RuntimeConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(None, ge=1)  # None: the node's cores / ranks on the node
    comm: Literal["auto", "mpi", "local"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast forward; trainable state stays float32
    deterministic: bool = False  # torch.use_deterministic_algorithms and a fixed cuBLAS workspace
    clients_per_step: int = Field(1, ge=1)  # clients a rank trains together in one forward/backward
    # Seconds a rank waits at a phase's agreement for the slowest rank before the job is ended
    # (the first phases get 4x). It bounds the spread between ranks, so with
    # server.trains_clients=false it must exceed a round's training time.
    phase_timeout: float = Field(1800.0, gt=0)


class Config(Section):
    seed: int = 0
    output: OutputConfig = OutputConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    peft: PeftConfig = PeftConfig()
    client: ClientConfig = ClientConfig()
    server: ServerConfig = ServerConfig()
    strategy: StrategyConfig = FedAvgConfig()
    devices: DevicesConfig = DevicesConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="before")
    @classmethod
    def _moved_sections(cls, data: Any) -> Any:
        if isinstance(data, dict) and "lora" in data:
            raise ValueError("lora: the section moved under peft (peft.method: lora, peft.lora: {rank: ...})")
        return data

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
        if self.runtime.clients_per_step > 1:
            _check_clients_per_step(self)
        if self.data.source == "jsonl" and not (self.data.train_file and self.data.eval_file):
            raise ValueError("data.source=jsonl needs data.train_file and data.eval_file")
        d = self.data
        if d.source == "embedded" and d.num_clients > min(d.num_train, d.max_train_samples or d.num_train):
            raise ValueError(
                f"data.num_clients ({d.num_clients}) exceeds the embedded task's training examples "
                f"({min(d.num_train, d.max_train_samples or d.num_train)}): every client needs at least one"
            )
        return self

    def check_world(self, num_ranks: int) -> None:
        """What the config asks of the MPI world, checked before anything is loaded."""
        if not self.server.trains_clients and num_ranks < 2:
            raise ConfigError("server.trains_clients=false needs at least 2 ranks (rank 0 would only serve)")

    def with_run_name(self, name: str) -> Config:
        """This config with output.name fixed (every rank must use rank 0's generated name)."""
        return self.model_copy(update={"output": self.output.model_copy(update={"name": name})})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# What fedmpi/batched.py's GroupTrainer honours; runtime.clients_per_step > 1 with anything else is refused.
BATCHED_STRATEGIES = ("fedavg", "head_pruning")


def _check_clients_per_step(cfg: Config) -> None:
    """runtime.clients_per_step > 1 trains G clients in one forward: refuse what that cannot reproduce."""
    g = f"runtime.clients_per_step={cfg.runtime.clients_per_step}"
    fix = "or runtime.clients_per_step=1"
    if cfg.strategy.name not in BATCHED_STRATEGIES:
        raise ValueError(
            f"{g} supports strategy.name in {', '.join(BATCHED_STRATEGIES)} only (no client hooks, starting "
            f"points or budgets of other strategies); strategy.name is {cfg.strategy.name!r}: {fix}"
        )
    if cfg.peft.method != "lora":
        raise ValueError(f"{g} stacks LoRA factors; peft.method is {cfg.peft.method!r}: set peft.method=lora {fix}")
    if cfg.peft.lora.dropout > 0:
        raise ValueError(
            f"{g} trains with dropout off; set peft.lora.dropout=0 (it is {cfg.peft.lora.dropout}) {fix}"
        )
    if cfg.client.prox_mu > 0:
        raise ValueError(f"{g} has no FedProx term; client.prox_mu is {cfg.client.prox_mu}: set it to 0 {fix}")
    strategy = cfg.strategy
    if getattr(strategy, "pruned_heads", "frozen") == "removed":
        raise ValueError(f"{g} computes every head; strategy.pruned_heads=removed needs {fix}")
    if getattr(strategy, "score_on", "training") == "uploaded":
        raise ValueError(f"{g} scores heads during training only; strategy.score_on=uploaded needs {fix}")


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
        loc = [p for i, p in enumerate(err["loc"]) if not (i == 1 and err["loc"][0] == "strategy" and p in STRATEGY_NAMES)]
        key = ".".join(str(p) for p in loc) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            if err["loc"][0] == "strategy" and len(err["loc"]) > 1 and err["loc"][1] in STRATEGY_NAMES:
                msg = f"unknown key for strategy.name={err['loc'][1]}"
        lines.append(f"{key}: {msg}" if err["loc"] else msg)
    if len(lines) == 1:
        return f"invalid configuration: {lines[0]}"
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
