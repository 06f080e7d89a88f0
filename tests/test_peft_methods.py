"""Every PEFT method on every architecture: wraps, maps its parameters to heads, trains (platform.md section 1)."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from fedmpi import accounting
from fedmpi.client import LocalTrainer
from fedmpi.config import ClientConfig, ConfigError, PeftConfig, load_config
from fedmpi.data import TextSplit, tokenize_split
from fedmpi.models import TINY_NAMES, HeadConfidence, attention_modules, build_model, hf_model, use_confidence_attention
from fedmpi.models.groups import ATTENTION_KINDS
from fedmpi.models.importance import confidence_attention_forward
from fedmpi.peft_methods import PEFT_METHODS, Full, Ia3, Lora, Prefix, Prompt, get_method, method_from_config

OPTIONS = {"lora": dict(rank=4), "ia3": {}, "prefix": dict(num_virtual_tokens=3), "prompt": dict(num_virtual_tokens=3), "full": {}}
MODELS = [(n, "classification") for n in (*TINY_NAMES, "minilm")] + [(f"tiny-{a}", "generation") for a in ("t5", "bart", "gpt2")]
CLASSIFIERS = {"tiny-bert", "tiny-distilbert", "tiny-roberta", "tiny-t5", "tiny-bart", "tiny-gpt2", "minilm"}
# What peft 0.21 + transformers 5 cannot do, and the reason the error gives (README "Known limitations").
UNSUPPORTED = {
    **{("prefix", n, "classification"): "passes past_key_values" for n in CLASSIFIERS},
    ("prompt", "tiny-t5", "classification"): "pools at the EOS token",
    ("prompt", "tiny-bart", "classification"): "pools at the EOS token",
    ("prompt", "tiny-gpt2", "classification"): "pools the last non-padding token",
}
TEXTS = ["the cat sat on the mat", "hello world", "federated learning of attention heads", "a b c d e"]
TARGETS = ["a cat", "hi there world", "heads", "letters"]


def build(method: str, name: str, kind: str = "classification", **options):
    cls = get_method(method)
    return build_model(name, kind=kind, num_labels=3 if kind == "classification" else None,
                       method=cls(**{**OPTIONS[method], **options}), seed=0)  # fmt: skip


def split(kind: str) -> TextSplit:
    if kind == "classification":
        return TextSplit(TEXTS, np.array([0, 1, 2, 0], dtype=np.int64), None)
    return TextSplit(TEXTS, None, TARGETS)


def test_registry_names_match_the_config_and_the_accounting() -> None:
    config_names = typing.get_args(PeftConfig.model_fields["method"].annotation)
    assert tuple(PEFT_METHODS) == config_names == ("lora", "ia3", "prefix", "prompt", "full")
    assert set(PEFT_METHODS) == set(accounting.PEFT_METHODS)
    assert [PEFT_METHODS[n] for n in PEFT_METHODS] == [Lora, Ia3, Prefix, Prompt, Full]
    with pytest.raises(ValueError, match=r"peft.method: unknown method 'adalora'; known: lora, ia3, prefix, prompt, full"):
        get_method("adalora")


def test_config_peft_section(tmp_path) -> None:
    cfg = load_config(None, ["peft.method=ia3", "peft.ia3.target_modules=[k, v]", "peft.prompt.num_virtual_tokens=5"])
    method = method_from_config(cfg.peft)
    assert method == Ia3(target_modules=("k", "v"), feedforward_modules=None)
    assert method_from_config(load_config(None, ["peft.lora.rank=8"]).peft) == Lora(rank=8)
    assert cfg.peft.prompt.num_virtual_tokens == 5 and cfg.peft.prefix.num_virtual_tokens == 20
    with pytest.raises(ConfigError, match="peft.method"):
        load_config(None, ["peft.method=ptuning"])
    with pytest.raises(ConfigError, match="peft.prefix.num_virtual_tokens"):
        load_config(None, ["peft.prefix.num_virtual_tokens=0"])
    old = tmp_path / "old.yaml"
    old.write_text("lora:\n  rank: 8\n")
    with pytest.raises(ConfigError, match="lora: the section moved under peft"):
        load_config(old)


@pytest.mark.parametrize("method", list(PEFT_METHODS))
@pytest.mark.parametrize("name,kind", MODELS)
def test_wraps_maps_and_trains_with_pruned_heads_frozen(method: str, name: str, kind: str) -> None:
    if (method, name, kind) in UNSUPPORTED:
        with pytest.raises(ValueError, match=f"peft.method={method} cannot be used with model type '.*'.*"
                                             f"{UNSUPPORTED[method, name, kind]}"):  # fmt: skip
            build(method, name, kind)
        return
    bundle = build(method, name, kind)
    model, layout, groups = bundle.model, bundle.layout, bundle.groups
    assert list(layout.names) == [n for n, p in model.named_parameters() if p.requires_grad]
    assert groups.group_index.shape == (layout.numel,) and groups.num_groups > 0
    # Heads are groups of attention modules of this model; a family's heads own equal shares.
    modules = dict(model.named_modules())
    for family, (a, b) in zip(groups.families, zip(groups.offsets[:-1], groups.offsets[1:])):
        assert family.name in modules and family.kind in ATTENTION_KINDS
        sizes = groups.group_sizes()[a:b]
        assert (sizes > 0).all() and (sizes == sizes[0]).all()
    task = layout.element_task_head_mask()
    assert (groups.group_index[task] == -1).all()
    assert task.any() == (kind == "classification")

    # One local step under head pruning, importance recorded: pruned heads do not move.
    use_confidence_attention(model)
    confidence = HeadConfidence(model, bundle.head_map, eos_token_id=bundle.eos_token_id, pad_token_id=bundle.pad_token_id)
    data = tokenize_split(split(kind), bundle.tokenizer, kind=kind, max_length=16, max_target_length=8,
                          causal_lm=bundle.causal_lm)  # fmt: skip
    trainer = LocalTrainer(bundle, data, ClientConfig(batch_size=4, lr=1e-2), device=torch.device("cpu"), seed=0,
                           confidence=confidence, groups=groups)  # fmt: skip
    kept = np.arange(groups.num_groups) % 2 == 0
    start = layout.get_flat(model).numpy().copy()
    result = trainer.train(np.arange(4), start, 1, 0, record_importance=True, trained_groups=kept)
    assert np.isfinite(result.train_loss) and np.isfinite(result.delta).all()
    assert result.scores.shape == (groups.num_groups,) and (result.scores > 0).all()
    index = groups.group_index
    pruned = (index >= 0) & ~kept[np.maximum(index, 0)]
    assert (result.delta[pruned] == 0).all()
    # Every kept head's parameters are live: the step moves some of each. Except peft's
    # cross-attention prefix slots, which transformers 5 never reads (prefix.py).
    moved = np.bincount(index[(index >= 0) & (result.delta != 0)], minlength=groups.num_groups) > 0
    dead = np.repeat([method == "prefix" and f.kind == "cross" for f in groups.families],
                     [f.num_groups for f in groups.families])  # fmt: skip
    assert moved[kept & ~dead].all() and not moved[dead].any()


def _perturbed_output(module, x, layout, model, flat, owned) -> torch.Tensor:
    with torch.no_grad():
        before = module(x)
        changed = flat.clone()
        changed[torch.from_numpy(owned)] += 0.5
        layout.set_flat(model, changed)
        after = module(x)
        layout.set_flat(model, flat)
    return (after - before).abs().amax(dim=(0, 1)) > 1e-7


@pytest.mark.parametrize("method", ["ia3", "full"])
def test_gpt2_fused_c_attn_head_blocks_drive_that_heads_q_k_v_columns(method: str) -> None:
    bundle = build(method, "tiny-gpt2")
    model, layout, groups = bundle.model, bundle.layout, bundle.groups
    base = hf_model(model)
    c_attn = base.transformer.h[0].attn.c_attn
    model.eval()
    flat = layout.get_flat(model)
    family = [f.name for f in groups.families].index(attention_modules(model)[0].path)
    head2 = groups.offsets[family] + 2
    prefix = attention_modules(model)[0].qkv[0]
    in_c_attn = np.zeros(layout.numel, dtype=bool)
    for i, n in enumerate(layout.names):
        if n.startswith(prefix + "."):
            in_c_attn[layout.offsets[i] : layout.offsets[i + 1]] = True
    owned = in_c_attn & (groups.group_index == head2)
    assert owned.sum() == (24 if method == "ia3" else 32 * 24 + 24)  # 3 x 8 outputs (per input row, + bias)
    changed = _perturbed_output(c_attn, torch.randn(2, 5, 32), layout, model, flat, owned)
    expected = torch.zeros(96, dtype=torch.bool)
    for segment in range(3):
        expected[segment * 32 + 16 : segment * 32 + 24] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("name,out_path", [("tiny-gpt2", "transformer.h.0.attn.c_proj"),
                                           ("tiny-bert", "bert.encoder.layer.0.attention.output.dense")])
def test_full_w_o_head_block_reads_only_that_heads_input(name: str, out_path: str) -> None:
    bundle = build("full", name)
    model, layout, groups = bundle.model, bundle.layout, bundle.groups
    w_o = model.get_submodule(out_path)
    flat = layout.get_flat(model)
    weight = layout.slice_of(f"{out_path}.weight")
    owned = np.zeros(layout.numel, dtype=bool)
    owned[weight] = groups.group_index[weight] == groups.offsets[0] + 2
    assert owned.sum() == 8 * 32
    bias = f"{out_path}.bias"
    assert (groups.group_index[layout.slice_of(bias)] == -1).all()  # added after the heads are summed
    x = torch.randn(2, 5, 32)
    silent = x.clone()
    silent[..., 16:24] = 0  # head 2's block of W_o's input
    assert not _perturbed_output(w_o, silent, layout, model, flat, owned).any()
    assert _perturbed_output(w_o, x, layout, model, flat, owned).all()


def test_ia3_owns_k_v_and_w_o_input_but_not_the_ffn_by_hand() -> None:
    bundle = build("ia3", "tiny-bert")
    layout, index, offsets = bundle.layout, bundle.groups.group_index, bundle.groups.offsets
    layer = "base_model.model.bert.encoder.layer.1"
    for name in (f"{layer}.attention.self.key.ia3_l.default", f"{layer}.attention.self.value.ia3_l.default",
                 f"{layer}.attention.output.dense.ia3_l.default"):  # fmt: skip
        assert list(index[layout.slice_of(name)]) == list(offsets[1] + np.repeat(np.arange(4), 8))
    assert (index[layout.slice_of(f"{layer}.output.dense.ia3_l.default")] == -1).all()  # the FFN vector


def test_t5_ia3_is_peft_default_k_v_and_wo() -> None:
    bundle = build("ia3", "tiny-t5", "generation")
    names = bundle.layout.names
    assert {n.split(".")[-3] for n in names} == {"k", "v", "wo"}
    wo = [n for n in names if ".wo." in n]
    assert all((bundle.groups.group_index[bundle.layout.slice_of(n)] == -1).all() for n in wo)
    assert bundle.groups.num_groups == 6 * 4  # 2 encoder self + 2 decoder self + 2 cross, 4 heads


@pytest.mark.parametrize("name", ["tiny-t5", "tiny-gpt2"])
def test_prefix_columns_are_the_keys_and_values_each_layer_sees(name: str) -> None:
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def recording(module, query, key, value, attention_mask, **kwargs):
        seen[id(module)] = (key.detach(), value.detach())
        return confidence_attention_forward(module, query, key, value, attention_mask, **kwargs)

    ALL_ATTENTION_FUNCTIONS.register("fedmpi_test_recording", recording)
    ALL_MASK_ATTENTION_FUNCTIONS.register("fedmpi_test_recording", eager_mask)
    bundle = build("prefix", name, "generation")
    model, layout, groups = bundle.model, bundle.layout, bundle.groups
    hf_model(model).set_attn_implementation("fedmpi_test_recording")
    table = model.prompt_encoder.default.embedding.weight.detach()  # (Tp, slots * 2 * d)
    with torch.no_grad():
        model(**_batch(bundle))
    attentions = attention_modules(model)
    if name == "tiny-t5":  # per decoder layer: a self-attention slot, then peft's cross-attention slot
        slots = [a for a in attentions if a.kind in ("decoder_self", "cross")]
        assert [a.kind for a in slots] == ["decoder_self", "cross"] * 2
    else:
        slots = attentions
        assert [a.kind for a in slots] == ["self", "self"]
    assert table.shape == (3, len(slots) * 2 * 32)
    assert [f.name for f in groups.families] == [a.path for a in slots]
    index = groups.group_index.reshape(table.shape)
    for slot, a in enumerate(slots):
        key, value = seen[id(model.get_submodule(a.path))]
        for h in range(4):
            for entry, tensor in ((2 * slot, key), (2 * slot + 1, value)):
                cols = slice(entry * 32 + h * 8, entry * 32 + (h + 1) * 8)
                assert (index[:, cols] == groups.offsets[slot] + h).all()
                if a.kind != "cross":  # the first Tp key/value positions are the prefix
                    assert torch.equal(tensor[0, h, :3], table[:, cols])
                else:  # transformers 5 drops peft's cross-attention prefix: the encoder's tokens only
                    assert tensor.shape[2] == _batch(bundle)["input_ids"].shape[1]


def _batch(bundle) -> dict[str, torch.Tensor]:
    tok = bundle.tokenizer
    batch = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    target = batch if bundle.causal_lm else tok(TARGETS, padding=True, return_tensors="pt")
    batch["labels"] = target["input_ids"].masked_fill(target["attention_mask"] == 0, -100)
    return batch


@pytest.mark.parametrize("name,kind", [("tiny-bert", "classification"), ("tiny-t5", "generation")])
def test_prompt_columns_belong_to_the_first_attention_modules_heads(name: str, kind: str) -> None:
    bundle = build("prompt", name, kind)
    first = attention_modules(bundle.model)[0]
    assert [f.name for f in bundle.groups.families] == [first.path]
    table = bundle.layout.slice_of("prompt_encoder.default.embedding.weight")
    index = bundle.groups.group_index[table].reshape(3, 32)
    assert (index == np.repeat(np.arange(4), 8)[None, :]).all()
    assert bundle.layout.shapes[0 if kind == "generation" else -1] == (3, 32)  # no dead second half (seq2seq)


def test_full_frozen_modules_and_task_head() -> None:
    bundle = build("full", "tiny-bert", frozen_modules=("embeddings",))
    names = bundle.layout.names
    assert not any(".embeddings." in f".{n}" for n in names)
    assert [n for n, t in zip(names, bundle.layout.is_task_head) if t] == ["classifier.weight", "classifier.bias"]
    with pytest.raises(ValueError, match="task head module 'classifier' is frozen"):
        build("full", "tiny-bert", frozen_modules=("classifier",))
