"""Head confidence (Eq. 6): the reduction by hand, EOS handling, exactness of the attention."""

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
    TINY_NAMES,
    build_model,
    confidence,
    set_attention,
    use_confidence_attention,
)
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


class _ToyAttention(torch.nn.Module):
    """One attention module whose scores are set by hand through q and k."""

    def __init__(self, queries: torch.Tensor) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(_attn_implementation=CONFIDENCE_ATTENTION)
        self.queries = queries  # (H, dh)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        h = self.queries.shape[0]
        key = torch.eye(t).expand(b, h, t, t)  # key j is the one-hot e_j
        query = self.queries[None, :, None, :].expand(b, h, t, t)
        additive = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        out, _ = confidence_attention_forward(self, query, key, key, additive, scaling=1.0)
        return out


def test_eos_dump_is_not_confident_content_focus_is() -> None:
    cls, a, b, sep, pad = 101, 7, 8, 102, 0
    input_ids = torch.tensor([[cls, a, b, sep, pad]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 0]])
    sharp = 20.0
    queries = torch.zeros(2, 5)
    queries[0, 3] = sharp  # head 0 puts (almost) all its attention on [SEP], the EOS
    queries[1, 1] = sharp  # head 1 puts it on the content token "a"
    model = torch.nn.Module()
    model.attn = _ToyAttention(queries)
    model.config = types.SimpleNamespace(is_encoder_decoder=False)
    head_map = HeadMap((AttentionHeads("attn", "self", 2, 5),), np.zeros(0, dtype=np.int32))
    recorder = HeadConfidence(model, head_map, eos_token_id=sep, pad_token_id=pad)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    with recorder.recording(batch):
        model.attn(input_ids, attention_mask)
    scores = recorder.scores()
    # Keys [CLS], a, b, [SEP] are unmasked (PAD is masked): the favoured key gets e^20/(e^20 + 3).
    top = np.exp(sharp) / (np.exp(sharp) + 3)
    rest = 1 / (np.exp(sharp) + 3)
    assert scores.shape == (2,) and scores.dtype == np.float32
    assert scores[0] == pytest.approx(rest, rel=1e-4)  # its mass sits on EOS, which is zeroed
    assert scores[1] == pytest.approx(top, rel=1e-6)
    assert recorder.num_samples == 1


@pytest.mark.parametrize("name,kind", CASES)
def test_logits_equal_eager(name: str, kind: str) -> None:
    bundle = build(name, kind)
    model = bundle.model.eval()
    batch = make_batch(bundle)
    with torch.no_grad():
        eager = model(**batch).logits
        use_confidence_attention(model)
        recorder = HeadConfidence(model, bundle.head_map, eos_token_id=bundle.eos_token_id,
                                  pad_token_id=bundle.pad_token_id)
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
    recorder = HeadConfidence(model, bundle.head_map, eos_token_id=bundle.eos_token_id,
                              pad_token_id=bundle.pad_token_id)
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
    recorder = HeadConfidence(model, bundle.head_map, eos_token_id=bundle.eos_token_id,
                              pad_token_id=bundle.pad_token_id)
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
    recorder = HeadConfidence(bundle.model, bundle.head_map, eos_token_id=bundle.eos_token_id,
                              pad_token_id=bundle.pad_token_id)
    with pytest.raises(RuntimeError, match="use_confidence_attention"):
        with recorder.recording(make_batch(bundle)):
            pass
    use_confidence_attention(bundle.model)
    with pytest.raises(RuntimeError, match="was not called while recording"):
        with recorder.recording(make_batch(bundle)):
            pass
    set_attention(bundle.model, "sdpa")  # and back
