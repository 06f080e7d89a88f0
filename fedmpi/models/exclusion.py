"""Which token positions head confidence (Eq. 6) ignores: config ``strategy.importance_exclude``.

A head that parks its attention on a token carrying no content ("attention sinks": EOS /
[SEP], and in many pretrained encoders [CLS] or <s> too) has a large max weight without
being confident about anything. The paper zeroes EOS columns; MiniLM's recorded masks show
[CLS]-sink heads winning instead, so the other modes also zero those columns:

- ``eos``: EOS (or [SEP] where the tokenizer has no EOS), the method-spec default;
- ``eos+bos``: also BOS / [CLS] / <s>, and the decoder start token of encoder-decoders;
- ``special``: every special token of the tokenizer, and the decoder start token.

The excluded positions are left out both as keys of each query's max and as queries of
the mean (an EOS query's attention says nothing about content either). Padding is always
excluded.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import PretrainedConfig, PreTrainedTokenizerBase

from fedmpi.models.importance import ImportanceOptions

IdsOf = Callable[[PreTrainedTokenizerBase, int | None], set[int]]


def _eos(tokenizer: PreTrainedTokenizerBase, eos: int | None) -> set[int]:
    return set() if eos is None else {eos}


def _eos_bos(tokenizer: PreTrainedTokenizerBase, eos: int | None) -> set[int]:
    ids = {tokenizer.bos_token_id, tokenizer.cls_token_id}
    return _eos(tokenizer, eos) | {int(i) for i in ids if i is not None}


def _special(tokenizer: PreTrainedTokenizerBase, eos: int | None) -> set[int]:
    return _eos_bos(tokenizer, eos) | {int(i) for i in tokenizer.all_special_ids}


# mode -> (ids excluded on the input/encoder side, whether the decoder start token is excluded too)
EXCLUSIONS: dict[str, tuple[IdsOf, bool]] = {
    "eos": (_eos, False),
    "eos+bos": (_eos_bos, True),
    "special": (_special, True),
}


def importance_options(
    mode: str,
    tokenizer: PreTrainedTokenizerBase,
    config: PretrainedConfig,
    *,
    eos_token_id: int | None,
    pad_token_id: int,
    skip_first_queries: int = 0,
) -> ImportanceOptions:
    """The token sets of exclusion ``mode`` for this tokenizer and model."""
    if mode not in EXCLUSIONS:
        raise ValueError(f"strategy.importance_exclude: unknown mode {mode!r}; known: {sorted(EXCLUSIONS)}")
    ids_of, decoder_start = EXCLUSIONS[mode]
    excluded = frozenset(ids_of(tokenizer, eos_token_id))
    decoder = set(excluded)
    if decoder_start and getattr(config, "is_encoder_decoder", False):
        start = getattr(config, "decoder_start_token_id", None)
        decoder.add(pad_token_id if start is None else int(start))
    return ImportanceOptions(excluded, frozenset(decoder), skip_first_queries)
