"""Building a backbone and wrapping it with LoRA: name in, ready-to-train bundle out.

``build_model`` resolves a model name (the packaged ``minilm``, a ``tiny-*`` architecture,
or a Hugging Face name / local path), wraps it with peft LoRA on the q, k, v projections
(method-spec "LoRA placement"), checks that exactly LoRA A/B and the task head train, and
returns the model with its flat-vector layout and head map. Generation loads a seq2seq model
for an encoder-decoder config (T5, BART) and a causal LM for a decoder-only one (GPT-2);
``MODEL_KINDS`` lists the three kinds. Every random initialisation
(tiny backbone, task head, LoRA A) happens after ``torch.manual_seed(seed)``, so equal
seeds give bit-identical models on every rank.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from huggingface_hub import constants as hub_constants
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.pytorch_utils import Conv1D

from fedmpi.models import importance  # noqa: F401  (registers the confidence attention)
from fedmpi.models.arch import arch_spec
from fedmpi.models.groups import GroupFamily, GroupMap
from fedmpi.models.heads import HeadMap, build_head_map
from fedmpi.models.params import TrainableLayout, is_lora_param
from fedmpi.models.tiny import MINILM_NAME, TINY_NAMES, minilm_dir, packaged_tokenizer, tiny_config
from fedmpi.peft_methods.base import PeftMethod

KINDS = ("classification", "generation")
T = TypeVar("T")

# What the backbone is, given the task: the Auto class that loads it and peft's task type.
# Generation picks seq2seq for encoder-decoder configs and causal_lm for decoder-only ones.
MODEL_KINDS: dict[str, tuple[type, TaskType]] = {
    "classification": (AutoModelForSequenceClassification, TaskType.SEQ_CLS),
    "seq2seq": (AutoModelForSeq2SeqLM, TaskType.SEQ_2_SEQ_LM),
    "causal_lm": (AutoModelForCausalLM, TaskType.CAUSAL_LM),
}


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    alpha: float | None = None  # None -> 2 * rank (method-spec defaults)
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None -> the architecture's q, k, v projections

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")

    @property
    def resolved_alpha(self) -> float:
        return float(2 * self.rank if self.alpha is None else self.alpha)


@dataclass
class ModelBundle:
    model: torch.nn.Module  # the peft-wrapped model, on CPU, float32, train() mode
    tokenizer: PreTrainedTokenizerBase
    kind: str  # "classification" | "generation"
    layout: TrainableLayout
    head_map: HeadMap
    pad_token_id: int
    eos_token_id: int | None  # EOS, or [SEP] for BERT-style tokenizers without one
    model_kind: str = "classification"  # a key of MODEL_KINDS

    @property
    def causal_lm(self) -> bool:
        """Generation with a decoder-only model: prompt and target are one sequence."""
        return self.model_kind == "causal_lm"

    @property
    def groups(self) -> GroupMap:
        """The attention heads as parameter groups: one family per attention module."""
        families = tuple(GroupFamily(m.name, m.kind, m.num_heads, m.head_dim) for m in self.head_map.modules)
        return GroupMap(families=families, group_index=self.head_map.head_index)


def build_model(
    name: str,
    *,
    kind: str,
    num_labels: int | None,
    lora: LoraSettings,
    seed: int,
    attn_implementation: str = "sdpa",
    method: PeftMethod | None = None,
) -> ModelBundle:
    """Build backbone ``name`` for ``kind``, wrap it with LoRA (or ``method``) and describe its trainable vector."""
    if kind not in KINDS:
        raise ValueError(f"model kind must be one of {KINDS}, got {kind!r}")
    if kind == "classification" and (num_labels is None or num_labels < 1):
        raise ValueError(f"a classification model needs num_labels >= 1, got {num_labels}")
    tokenizer, backbone, model_kind = _load_backbone(name, kind=kind, num_labels=num_labels, seed=seed)
    if tokenizer.pad_token is None:
        # GPT-2 and friends have no pad token: pad with EOS, so batches and the classifier's
        # "last non-pad token" lookup work.
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is None:
        raise ValueError(f"the tokenizer of {name!r} has neither a pad nor an EOS token")
    if backbone.config.pad_token_id is None:
        backbone.config.pad_token_id = tokenizer.pad_token_id
    set_attention(backbone, attn_implementation)
    if method is None:
        model = wrap_with_lora(backbone, kind=kind, lora=lora, seed=seed, task_type=MODEL_KINDS[model_kind][1])
    else:
        spec = arch_spec(backbone.config.model_type)
        task_head = list(spec.task_head) if (spec and kind == "classification") else None
        model = method.wrap(backbone, kind=kind, task_head=task_head, seed=seed)
    model.float().train()
    layout = TrainableLayout.from_model(model)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return ModelBundle(
        model=model,
        tokenizer=tokenizer,
        kind=kind,
        layout=layout,
        head_map=build_head_map(model, layout) if _has_lora_b(layout) else HeadMap((), np.full(layout.numel, -1, np.int32)),
        pad_token_id=int(tokenizer.pad_token_id),
        eos_token_id=None if eos is None else int(eos),
        model_kind=model_kind,
    )


def _has_lora_b(layout: TrainableLayout) -> bool:
    """Whether any attention head can own anything (LoRA-form B factors); full blocks have none."""
    return any(".lora_B." in n for n in layout.names)


def set_attention(model: torch.nn.Module, attn_implementation: str) -> None:
    """Switch every attention module of ``model`` (peft-wrapped or not) to ``attn_implementation``."""
    if attn_implementation != "eager" and attn_implementation not in ALL_ATTENTION_FUNCTIONS:
        known = ["eager", *sorted(ALL_ATTENTION_FUNCTIONS.valid_keys())]
        raise ValueError(f"unknown attn_implementation {attn_implementation!r}; known: {known}")
    hf_model = model.get_base_model() if isinstance(model, PeftModel) else model
    hf_model.set_attn_implementation(attn_implementation)


def wrap_with_lora(
    backbone: PreTrainedModel, *, kind: str, lora: LoraSettings, seed: int, task_type: TaskType | None = None
) -> PeftModel:
    """Wrap ``backbone`` with LoRA; the classification head (if any) trains in full."""
    model_type = backbone.config.model_type
    spec = arch_spec(model_type)
    targets = lora.target_modules or (spec.qkv_targets if spec else None)
    if not targets:
        raise ValueError(
            f"no default LoRA targets for model type {model_type!r}; set lora.target_modules to its q, k, v projections"
        )
    leaf_types = {n.rpartition(".")[2]: type(m) for n, m in backbone.named_modules()}
    # peft matches a target by the end of a module's name; say so in fedmpi's words if none does.
    if not any(t in leaf_types or any(n.endswith(f".{t}") for n, _ in backbone.named_modules()) for t in targets):
        raise ValueError(
            f"lora.target_modules={list(targets)}: no module of this {model_type} model has that name; "
            f"its linear layers are named {sorted(_linear_leaf_names(backbone))}"
        )
    # peft needs fan_in_fan_out for Conv1D (GPT-2 stores weights as (in, out)).
    fan_in_fan_out = any(leaf_types.get(t) is Conv1D for t in targets)
    task_head = list(spec.task_head) if (spec and kind == "classification") else None
    config = LoraConfig(
        task_type=task_type or (TaskType.SEQ_CLS if kind == "classification" else TaskType.SEQ_2_SEQ_LM),
        r=lora.rank,
        lora_alpha=lora.resolved_alpha,
        lora_dropout=lora.dropout,
        target_modules=list(targets),
        fan_in_fan_out=fan_in_fan_out,
        modules_to_save=None if task_head is None else list(task_head),  # peft extends the list it gets
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        # peft reads a property transformers 5 deprecates; the warning is not actionable here.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(backbone, config)
    _check_trainable(model, kind=kind, task_head=task_head)
    return model


def _linear_leaf_names(model: torch.nn.Module) -> set[str]:
    return {n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}


def _check_trainable(model: PeftModel, *, kind: str, task_head: list[str] | None) -> None:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    others = [n for n in trainable if not is_lora_param(n)]
    if not any(is_lora_param(n) for n in trainable):
        raise ValueError("LoRA matched no module: check lora.target_modules")
    if kind == "generation" and others:
        raise ValueError(f"a generation model should train only LoRA, but {others[0]!r} is trainable")
    if kind == "classification":
        if not others:
            raise ValueError("the classification head is not trainable; add it to the architecture table in arch.py")
        if task_head:
            stray = [n for n in others if not any(f".{h}." in f".{n}" for h in task_head)]
            if stray:
                raise ValueError(f"{stray[0]!r} is trainable but is neither LoRA nor the task head {task_head}")
            for head in task_head:
                if not any(f".{head}.modules_to_save." in n for n in others):
                    raise ValueError(f"task head module {head!r} was not made trainable by peft")


def _load_backbone(
    name: str, *, kind: str, num_labels: int | None, seed: int
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel, str]:
    """Tokenizer, backbone and its model kind (a key of MODEL_KINDS)."""
    if name in TINY_NAMES:
        tokenizer = packaged_tokenizer()
        config = tiny_config(name.removeprefix("tiny-"), tokenizer)
        if name != "tiny-bert":
            # Only BERT has token types; the others' forward() rejects or misuses token_type_ids.
            tokenizer.model_input_names = ["input_ids", "attention_mask"]
        model_kind = _model_kind(name, config, kind)
        if kind == "classification":
            config.num_labels = num_labels
        torch.manual_seed(seed)
        return tokenizer, MODEL_KINDS[model_kind][0].from_config(config), model_kind
    path = str(minilm_dir()) if name == MINILM_NAME else name
    tokenizer = _load_pretrained(path, lambda p, **kw: AutoTokenizer.from_pretrained(p, **kw))
    config = _load_pretrained(path, lambda p, **kw: AutoConfig.from_pretrained(p, **kw))
    model_kind = _model_kind(name, config, kind)
    extra = {"num_labels": num_labels} if kind == "classification" else {}
    auto = MODEL_KINDS[model_kind][0]
    torch.manual_seed(seed)  # the task head is freshly initialised
    model = _load_pretrained(path, lambda p, **kw: auto.from_pretrained(p, dtype=torch.float32, **extra, **kw))
    return tokenizer, model, model_kind


def _load_pretrained(name: str, load: Callable[..., T]) -> T:
    """``load(name)`` from the local cache or path first, then from the hub unless offline."""
    try:
        return load(name, local_files_only=True)
    except (OSError, ValueError) as local_error:
        if hub_constants.is_offline_mode():
            error: Exception = local_error
        else:
            try:
                return load(name)
            except Exception as hub_error:  # connection errors differ by hub client; all mean "cannot load"
                error = hub_error
    reason = (str(error).splitlines() or [""])[0]
    raise ValueError(
        f"cannot load model {name!r}: it is not a local path or in the local Hugging Face cache, and the hub is "
        f"unreachable or does not have it ({type(error).__name__}: {reason}). "
        "Use model.name=minilm (packaged, offline), a tiny-* model, or a local path."
    ) from error


def _model_kind(name: str, config: PretrainedConfig, kind: str) -> str:
    """classification stays classification; generation is seq2seq or causal_lm by the config."""
    if kind == "classification":
        return "classification"
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    spec = arch_spec(config.model_type)
    if spec is not None and not spec.decoder_only:
        raise ValueError(
            f"kind 'generation' needs an encoder-decoder (T5, BART) or a decoder-only (GPT-2) model; "
            f"{name!r} is the encoder-only {config.model_type!r}"
        )
    return "causal_lm"  # any other Hugging Face architecture: loaded as a causal LM
