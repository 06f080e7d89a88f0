"""Building a backbone and wrapping it with a PEFT method: name in, ready-to-train bundle out.

``build_model`` resolves a model name (the packaged ``minilm``, a ``tiny-*`` architecture,
or a Hugging Face name / local path), has the PEFT method (``fedmpi/peft_methods/``, the
config's ``peft`` section) wrap it, and returns the model with its flat-vector layout and
its parameter groups (which elements each attention head owns). Generation loads a seq2seq
model for an encoder-decoder config (T5, BART) and a causal LM for a decoder-only one
(GPT-2); ``MODEL_KINDS`` lists the three kinds. Every random initialisation (tiny
backbone, task head, adapters) happens after ``torch.manual_seed(seed)``, so equal seeds
give bit-identical models on every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch
from huggingface_hub import constants as hub_constants
from peft import PeftModel, TaskType
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

from fedmpi.models import importance  # noqa: F401  (registers the confidence attention)
from fedmpi.models.arch import arch_spec
from fedmpi.models.groups import GroupMap
from fedmpi.models.heads import HeadMap, head_map_from_groups
from fedmpi.models.params import TrainableLayout
from fedmpi.models.tiny import MINILM_NAME, TINY_NAMES, minilm_dir, packaged_tokenizer, tiny_config

if TYPE_CHECKING:
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


@dataclass
class ModelBundle:
    model: torch.nn.Module  # the peft-wrapped model, on CPU, float32, train() mode
    tokenizer: PreTrainedTokenizerBase
    kind: str  # "classification" | "generation"
    layout: TrainableLayout
    groups: GroupMap  # which elements each attention head owns (the method's map)
    pad_token_id: int
    eos_token_id: int | None  # EOS, or [SEP] for BERT-style tokenizers without one
    model_kind: str = "classification"  # a key of MODEL_KINDS
    peft_method: str = "lora"  # the config's peft.method

    @property
    def causal_lm(self) -> bool:
        """Generation with a decoder-only model: prompt and target are one sequence."""
        return self.model_kind == "causal_lm"

    @property
    def head_map(self) -> HeadMap:
        """The same ids as ``groups`` in the old HeadMap form, for callers not yet on groups."""
        return head_map_from_groups(self.groups)


def build_model(
    name: str,
    *,
    kind: str,
    num_labels: int | None,
    method: PeftMethod,
    seed: int,
    attn_implementation: str = "sdpa",
) -> ModelBundle:
    """Build backbone ``name`` for ``kind``, wrap it with ``method`` and describe its trainable vector."""
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
    spec = arch_spec(backbone.config.model_type)
    task_head = list(spec.task_head) if (spec and kind == "classification") else None
    model = method.wrap(backbone, kind=kind, task_head=task_head, seed=seed)
    model.float().train()
    layout = TrainableLayout.from_model(model, task_head=task_head or ())
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return ModelBundle(
        model=model,
        tokenizer=tokenizer,
        kind=kind,
        layout=layout,
        groups=method.head_groups(model, layout),
        pad_token_id=int(tokenizer.pad_token_id),
        eos_token_id=None if eos is None else int(eos),
        model_kind=model_kind,
        peft_method=method.name,
    )


def set_attention(model: torch.nn.Module, attn_implementation: str) -> None:
    """Switch every attention module of ``model`` (peft-wrapped or not) to ``attn_implementation``."""
    if attn_implementation != "eager" and attn_implementation not in ALL_ATTENTION_FUNCTIONS:
        known = ["eager", *sorted(ALL_ATTENTION_FUNCTIONS.valid_keys())]
        raise ValueError(f"unknown attn_implementation {attn_implementation!r}; known: {known}")
    hf_model(model).set_attn_implementation(attn_implementation)


def hf_model(model: torch.nn.Module) -> PreTrainedModel:
    """The Hugging Face model inside ``model`` (peft-wrapped or, for full fine-tuning, itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


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
