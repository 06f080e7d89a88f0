"""Head confidence (Eq. 6): the reduction by hand, the chunked pass against eager maps, exclusions."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from fedmpi.peft_methods import Lora
from fedmpi.models import (
    CONFIDENCE_ATTENTION,
    AttentionHeads,
    HeadConfidence,
    HeadMap,
    ImportanceOptions,
    TINY_NAMES,
    build_model,
    chunked_confidence,
    confidence,
    set_attention,
    use_confidence_attention,
)
from fedmpi.models.exclusion import importance_options
from fedmpi.models.importance import confidence_attention_forward

CASES = [(n, "classification") for n in TINY_NAMES] + [("tiny-t5", "generation"), ("tiny-bart", "generation")]
TEXTS = ["the cat sat on the mat", "hello world", "federated learning of attention heads"]


def make_batch(bundle, extra_pad: int = 0) -> dict[str, torch.Tensor]:
    tok = bundle.tokenizer
    enc = tok(TEXTS, padding="max_length", max_length=9 + extra_pad, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if bundle.kind == "classification":
        batch["labels"] = torch.tensor([0, 1, 1])
    else:
        target = tok(["a cat", "hi there world", "heads"], padding="max_length", max_length=6 + extra_pad,
                     return_tensors="pt")
        batch["labels"] = target["input_ids"].masked_fill(target["attention_mask"] == 0, -100)
    return batch


def recorder_for(bundle, mode: str = "eos", skip: int = 0) -> HeadConfidence:
    options = importance_options(mode, bundle.tokenizer, bundle.model.config, eos_token_id=bundle.eos_token_id,
                                 pad_token_id=bundle.pad_token_id, skip_first_queries=skip)
    return HeadConfidence(bundle.model, bundle.head_map, options=options, pad_token_id=bundle.pad_token_id)


def build(name: str, kind: str, attn: str = "eager"):
    bundle = build_model(name, kind=kind, num_labels=2 if kind == "classification" else None,
                         method=Lora(rank=4), seed=0, attn_implementation=attn)
    # Non-zero B, so that the adapters take part in the forward being compared.
    flat = bundle.layout.get_flat(bundle.model)
    noise = torch.randn(flat.shape, generator=torch.Generator().manual_seed(1))
    bundle.layout.set_flat(bundle.model, flat + 0.1 * noise)
    return bundle


def test_reduction_by_hand() -> None:
    weights = torch.tensor([[
        # head 0: rows are query tokens, columns key tokens
        [[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
        # head 1
        [[0.1, 0.1, 0.8], [0.6, 0.2, 0.2], [1.0, 0.0, 0.0]],
    ]])
    query_valid = torch.tensor([[True, True, False]])
    key_valid = torch.tensor([[True, False, True]])
    # head 0: query 0 -> max(0.5, 0.2) = 0.5; query 1 -> max(0.1, 0.1) = 0.1; mean 0.3
    # head 1: query 0 -> max(0.1, 0.8) = 0.8; query 1 -> max(0.6, 0.2) = 0.6; mean 0.7
    got = confidence(weights, query_valid, key_valid)
    assert torch.allclose(got, torch.tensor([[0.3, 0.7]]))
    # A sample with no valid query scores 0, not NaN.
    assert confidence(weights, torch.zeros(1, 3, dtype=torch.bool), key_valid).eq(0).all()


def _eager_weights(q, k, scaling, mask, bias, causal):
    s = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if bias is not None:
        s = s + bias
    low = torch.finfo(torch.float32).min
    if mask is not None:
        s = s.masked_fill(~mask, low) if mask.dtype == torch.bool else s + mask
    elif causal:
        t = q.shape[2]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), low)
    return s.softmax(dim=-1)


@pytest.mark.parametrize("variant", ["bool-mask", "additive-mask", "causal", "position-bias", "row-mask"])
def test_chunked_equals_the_full_map(variant: str) -> None:
    g = torch.Generator().manual_seed(0)
    b, h, t, d = 2, 3, 7, 4
    q, k = 3 * torch.randn(b, h, t, d, generator=g), torch.randn(b, h, t, d, generator=g)
    present = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    mask = bias = None
    causal = False
    if variant == "bool-mask":
        mask = present[:, None, None, :]
    elif variant == "additive-mask":
        mask = (~present[:, None, None, :]).float() * torch.finfo(torch.float32).min
    elif variant == "causal":
        causal = True
    elif variant == "position-bias":
        bias = torch.randn(1, h, t, t, generator=g)
        mask = present[:, None, None, :]
    else:  # causal and padding in one (B, 1, T, T) mask, as GPT-2 gets it
        mask = present[:, None, None, :] & torch.ones(t, t, dtype=torch.bool).tril()
    key_valid = present & torch.tensor([True, False, True, True, True, True, False])  # an excluded key column
    query_valid = present.clone()
    query_valid[0, 2] = False
    weights = _eager_weights(q, k, 0.5, mask, bias, causal)
    expected = confidence(weights, query_valid, key_valid)
    for block in (2, 3, 128):
        got = chunked_confidence(q, k, scaling=0.5, attention_mask=mask, position_bias=bias, causal=causal,
                                 query_valid=query_valid, key_valid=key_valid, block=block)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_chunked_never_allocates_a_full_map() -> None:
    b, h, t, d, block = 2, 4, 64, 8, 16
    q, k = torch.randn(b, h, t, d), torch.randn(b, h, t, d)
    valid = torch.ones(b, t, dtype=torch.bool)
    full_map_bytes = b * h * t * t * 4
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        chunked_confidence(q, k, scaling=1.0, attention_mask=valid[:, None, None, :], position_bias=None,
                           causal=False, query_valid=valid, key_valid=valid, block=block)
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert 0 < largest <= b * h * block * block * 4 < full_map_bytes / 8


class _ToyAttention(torch.nn.Module):
    """One attention module whose scores are set by hand through q and k."""

    def __init__(self, queries: torch.Tensor, *, is_causal: bool = False) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(_attn_implementation=CONFIDENCE_ATTENTION)
        self.queries = queries  # (H, dh)
        self.is_causal = is_causal

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        b, t = input_ids.shape
        h = self.queries.shape[0]
        key = torch.eye(t).expand(b, h, t, t)  # key j is the one-hot e_j
        query = self.queries[None, :, None, :].expand(b, h, t, t)
        additive = None
        if attention_mask is not None:
            additive = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        out, _ = confidence_attention_forward(self, query, key, key, additive, scaling=1.0)
        return out


CLS, A, B, SEP, PAD = 101, 7, 8, 102, 0


def _toy_scores(queries, excluded, *, input_ids, attention_mask, skip=0, is_causal=False):
    model = torch.nn.Module()
    model.attn = _ToyAttention(queries, is_causal=is_causal)
    model.config = types.SimpleNamespace(is_encoder_decoder=False)
    head_map = HeadMap((AttentionHeads("attn", "self", queries.shape[0], queries.shape[1]),), np.zeros(0, np.int32))
    options = ImportanceOptions(frozenset(excluded), frozenset(excluded), skip)
    recorder = HeadConfidence(model, head_map, options=options, pad_token_id=PAD)
    batch = {"input_ids": input_ids} if attention_mask is None else {"input_ids": input_ids,
                                                                     "attention_mask": attention_mask}
    with recorder.recording(batch):
        model.attn(input_ids, attention_mask)
    assert recorder.num_samples == input_ids.shape[0]
    return recorder.scores()


def test_eos_dump_is_not_confident_content_focus_is() -> None:
    sharp = 20.0
    queries = torch.zeros(2, 5)
    queries[0, 3] = sharp  # head 0 puts (almost) all its attention on [SEP], the EOS
    queries[1, 1] = sharp  # head 1 puts it on the content token "a"
    scores = _toy_scores(queries, {SEP}, input_ids=torch.tensor([[CLS, A, B, SEP, PAD]]),
                         attention_mask=torch.tensor([[1, 1, 1, 1, 0]]))
    # Keys [CLS], a, b, [SEP] are unmasked (PAD is masked): the favoured key gets e^20/(e^20 + 3).
    top = np.exp(sharp) / (np.exp(sharp) + 3)
    rest = 1 / (np.exp(sharp) + 3)
    assert scores.shape == (2,) and scores.dtype == np.float32
    assert scores[0] == pytest.approx(rest, rel=1e-4)  # its mass sits on EOS, which is zeroed
    assert scores[1] == pytest.approx(top, rel=1e-6)


def test_cls_sink_scores_low_only_under_eos_bos() -> None:
    sharp = 20.0
    queries = torch.zeros(2, 5)
    queries[0, 0] = sharp  # head 0 parks its attention on [CLS]
    queries[1, 2] = sharp  # head 1 looks at the content token "b"
    ids, mask = torch.tensor([[CLS, A, B, SEP, PAD]]), torch.tensor([[1, 1, 1, 1, 0]])
    top = np.exp(sharp) / (np.exp(sharp) + 3)
    rest = 1 / (np.exp(sharp) + 3)
    eos = _toy_scores(queries, {SEP}, input_ids=ids, attention_mask=mask)
    np.testing.assert_allclose(eos, [top, top], rtol=1e-6)  # the sink looks as confident as the content head
    eos_bos = _toy_scores(queries, {SEP, CLS}, input_ids=ids, attention_mask=mask)
    assert eos_bos[0] == pytest.approx(rest, rel=1e-4)  # its [CLS] column is zeroed now
    assert eos_bos[1] == pytest.approx(top, rel=1e-6)
    # Excluded tokens are no queries either: a batch whose only valid query is [CLS] measures nothing.
    only_cls = _toy_scores(queries, {SEP, CLS}, input_ids=torch.tensor([[CLS, SEP, PAD, PAD, PAD]]),
                           attention_mask=torch.tensor([[1, 1, 0, 0, 0]]))
    np.testing.assert_array_equal(only_cls, [0.0, 0.0])


def test_exclusion_modes_name_the_tokenizers_ids() -> None:
    bundle = build("tiny-bert", "classification")  # MiniLM's tokenizer: [PAD]=0 [UNK]=100 [CLS]=101 [SEP]=102 [MASK]=103
    cfg = bundle.model.config
    opts = {m: importance_options(m, bundle.tokenizer, cfg, eos_token_id=bundle.eos_token_id, pad_token_id=0)
            for m in ("eos", "eos+bos", "special")}
    assert opts["eos"].excluded_ids == {SEP}
    assert opts["eos+bos"].excluded_ids == {SEP, CLS}
    assert opts["special"].excluded_ids == {0, 100, 101, 102, 103}
    t5 = build("tiny-t5", "generation")
    t5_opts = importance_options("eos+bos", t5.tokenizer, t5.model.config, eos_token_id=t5.eos_token_id,
                                 pad_token_id=t5.pad_token_id)
    assert t5_opts.decoder_excluded_ids == t5_opts.excluded_ids | {t5.model.config.decoder_start_token_id}
    with pytest.raises(ValueError, match="importance_exclude: unknown mode 'bos'"):
        importance_options("bos", bundle.tokenizer, cfg, eos_token_id=SEP, pad_token_id=0)


def test_skip_first_queries_of_causal_attention() -> None:
    # Uniform causal attention: query t spreads 1/(t+1) over keys 0..t, so its max is 1/(t+1).
    ids = torch.tensor([[A, B, A, B]])
    uniform = torch.zeros(1, 4)
    plain = _toy_scores(uniform, set(), input_ids=ids, attention_mask=None, is_causal=True)
    assert plain[0] == pytest.approx(np.mean([1, 1 / 2, 1 / 3, 1 / 4]), rel=1e-6)
    skipped = _toy_scores(uniform, set(), input_ids=ids, attention_mask=None, is_causal=True, skip=2)
    assert skipped[0] == pytest.approx(np.mean([1 / 3, 1 / 4]), rel=1e-6)
    # Bidirectional attention is not affected by the option.
    both = _toy_scores(uniform, set(), input_ids=ids, attention_mask=None, is_causal=False, skip=2)
    assert both[0] == pytest.approx(1 / 4, rel=1e-6)


ATTENTION_OUTPUTS = {"self": "attentions", "encoder_self": "encoder_attentions",
                     "decoder_self": "decoder_attentions", "cross": "cross_attentions"}


@pytest.mark.parametrize("mode", ["eos", "eos+bos"])
@pytest.mark.parametrize("name,kind", CASES)
def test_chunked_scores_equal_eager_map_scores(name: str, kind: str, mode: str) -> None:
    bundle = build(name, kind)  # eager attention: the maps come from transformers' own code
    model = bundle.model.eval()
    batch = make_batch(bundle, extra_pad=3)
    recorder = recorder_for(bundle, mode)
    tokens, decoder = recorder._validity(batch)
    validity = {"self": (tokens, tokens), "encoder_self": (tokens, tokens),
                "decoder_self": (decoder, decoder), "cross": (decoder, tokens)}
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
        seen = {kind_: 0 for kind_ in ATTENTION_OUTPUTS}
        expected = []
        for spec in bundle.head_map.modules:
            weights = getattr(out, ATTENTION_OUTPUTS[spec.kind])[seen[spec.kind]]
            seen[spec.kind] += 1
            query_valid, key_valid = validity[spec.kind]
            per_sample = confidence(weights, query_valid, key_valid)
            expected.append(per_sample.sum(0) / query_valid.any(1).sum())
        use_confidence_attention(model)
        with recorder.recording(batch):
            model(**batch)
    np.testing.assert_allclose(recorder.scores(), torch.cat(expected).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kind", CASES)
def test_logits_equal_eager(name: str, kind: str) -> None:
    bundle = build(name, kind)
    model = bundle.model.eval()
    batch = make_batch(bundle)
    with torch.no_grad():
        eager = model(**batch).logits
        use_confidence_attention(model)
        recorder = recorder_for(bundle)
        with recorder.recording(batch):
            measured = model(**batch).logits
    assert torch.allclose(eager, measured, atol=1e-5, rtol=0)
    scores = recorder.scores()
    assert scores.shape == (bundle.head_map.num_heads_total,) and scores.dtype == np.float32
    assert (scores > 0).all() and (scores <= 1).all()
    assert recorder.num_samples == 3


@pytest.mark.parametrize("name,kind", CASES)
def test_padding_and_batching_do_not_change_scores(name: str, kind: str) -> None:
    # Extra padding (input and labels) must be invisible: padded keys are zeroed, padded
    # queries not averaged, for encoder, decoder and cross attention alike.
    bundle = build(name, kind, attn=CONFIDENCE_ATTENTION)
    model = bundle.model.eval()
    recorder = recorder_for(bundle)
    with torch.no_grad():
        with recorder.recording(make_batch(bundle)):
            model(**make_batch(bundle))
        tight = recorder.scores()
        recorder.reset()
        assert recorder.num_samples == 0 and not recorder.scores().any()
        padded = make_batch(bundle, extra_pad=4)
        for i in range(3):  # one sample at a time: the mean over samples must not change either
            single = {k: v[i : i + 1] for k, v in padded.items()}
            with recorder.recording(single):
                model(**single)
    assert recorder.num_samples == 3
    np.testing.assert_allclose(recorder.scores(), tight, rtol=1e-5, atol=1e-6)


def test_recording_during_training_keeps_gradients() -> None:
    bundle = build("tiny-t5", "generation", attn=CONFIDENCE_ATTENTION)
    model = bundle.model.train()
    recorder = recorder_for(bundle)
    batch = make_batch(bundle)
    with recorder.recording(batch):
        loss = model(**batch).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and ".lora_B." in n]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert recorder.num_samples == 3 and (recorder.scores() > 0).all()


def test_recording_requires_the_confidence_attention() -> None:
    bundle = build("tiny-bert", "classification", attn="sdpa")
    recorder = recorder_for(bundle)
    with pytest.raises(RuntimeError, match="use_confidence_attention"):
        with recorder.recording(make_batch(bundle)):
            pass
    use_confidence_attention(bundle.model)
    with pytest.raises(RuntimeError, match="was not called while recording"):
        with recorder.recording(make_batch(bundle)):
            pass
    set_attention(bundle.model, "sdpa")  # and back
