"""What fedmpi knows about each supported transformer architecture.

One table, keyed by the Hugging Face ``config.model_type``: the default LoRA targets
(the q, k, v projections, method-spec "LoRA placement") and the task-head modules a
classification model must train. The head map and the confidence attention need a few
name facts that hold across architectures (which leaf names are q/k/v projections, which
attention modules are cross attention); they live here too, so no other module carries
per-architecture string tables.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    """Defaults for one architecture."""

    model_type: str
    qkv_targets: tuple[str, ...]  # default LoRA target_modules: the q, k, v projections
    task_head: tuple[str, ...]  # modules of a sequence-classification head (peft modules_to_save)
    fan_in_fan_out: bool = False  # GPT-2's Conv1D stores weights as (in, out)
    encoder_decoder: bool = False
    decoder_only: bool = False  # generates as a causal LM (encoder-only models cannot generate)
    pools_last_token: bool = False  # the classifier reads the last non-padding token (found from input_ids)
    # Where an attention module's output projection sits, relative to the module: (levels up, path).
    # strategy.pruned_heads=removed hands it only the kept heads' columns.
    output_projection: tuple[int, str] = (0, "")


ARCHS: dict[str, ArchSpec] = {
    spec.model_type: spec
    for spec in (
        ArchSpec("bert", ("query", "key", "value"), ("classifier",), output_projection=(1, "output.dense")),
        ArchSpec("distilbert", ("q_lin", "k_lin", "v_lin"), ("pre_classifier", "classifier"),
                 output_projection=(0, "out_lin")),
        ArchSpec("roberta", ("query", "key", "value"), ("classifier",),  # a RobertaClassificationHead
                 output_projection=(1, "output.dense")),
        ArchSpec("t5", ("q", "k", "v"), ("classification_head",), encoder_decoder=True, output_projection=(0, "o")),
        ArchSpec("bart", ("q_proj", "k_proj", "v_proj"), ("classification_head",), encoder_decoder=True,
                 output_projection=(0, "out_proj")),
        ArchSpec("gpt2", ("c_attn",), ("score",), fan_in_fan_out=True, decoder_only=True, pools_last_token=True,
                 output_projection=(0, "c_proj")),
    )
}

# Leaf names of separate query/key/value projections across architectures. Head h owns
# rows [h*dh, (h+1)*dh) of their LoRA B (method-spec "What a head owns").
QKV_PROJECTIONS: frozenset[str] = frozenset(
    {"query", "key", "value", "q_lin", "k_lin", "v_lin", "q", "k", "v", "q_proj", "k_proj", "v_proj"}
)
# A single projection producing q, k and v concatenated along the output (GPT-2).
FUSED_QKV_PROJECTIONS: frozenset[str] = frozenset({"c_attn"})
# Leaf names of an attention module's output projection W_o (a child of the attention module).
OUTPUT_PROJECTIONS: frozenset[str] = frozenset({"o", "out_proj", "out_lin", "c_proj"})
# BERT-style models keep W_o beside the attention, not inside it: ``<...>.attention.self`` has
# its W_o at ``<...>.attention.output.dense``.
SIBLING_OUTPUT_PROJECTION: tuple[str, str] = ("self", "output.dense")
# IA3 targets for architectures peft has no defaults for: (target_modules, feedforward_modules).
IA3_DEFAULTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "distilbert": (("k_lin", "v_lin", "lin2"), ("lin2",)),
}
# Leaf names of cross-attention modules in encoder-decoder models (T5, BART, BERT-as-decoder).
CROSS_ATTENTION_MODULES: frozenset[str] = frozenset({"EncDecAttention", "encoder_attn", "crossattention"})
# Attribute names under which attention modules store their head count and head width.
NUM_HEADS_ATTRS: tuple[str, ...] = ("num_heads", "n_heads", "num_attention_heads")
HEAD_DIM_ATTRS: tuple[str, ...] = ("head_dim", "attention_head_size", "key_value_proj_dim")


def arch_spec(model_type: str) -> ArchSpec | None:
    """The defaults for ``model_type``, or None for an architecture fedmpi has no table for."""
    return ARCHS.get(model_type)
