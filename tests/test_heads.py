"""Which flat elements each attention head owns (method-spec "What a head owns")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSeq2SeqLM, T5Config

from fedmpi.models import TrainableLayout, build_model, head_map_from_groups
from fedmpi.peft_methods import Lora
from fedmpi.peft_methods.lora import lora_head_groups

RANK = 4


def build(name: str, targets: tuple[str, ...] | None = None):
    return build_model(name, kind="classification", num_labels=2, method=Lora(rank=RANK, target_modules=targets), seed=0)


def rows_of(layout: TrainableLayout, head_index: np.ndarray, name: str) -> np.ndarray:
    i = layout.names.index(name)
    return head_index[layout.slice_of(name)].reshape(layout.shapes[i])


def test_bert_b_rows_belong_to_heads_by_hand() -> None:
    bundle = build("tiny-bert")
    layout, hm = bundle.layout, bundle.head_map
    assert [m.num_heads for m in hm.modules] == [4, 4] and hm.num_heads_total == 8
    dh = hm.modules[1].head_dim
    assert dh == 8
    for proj in ("query", "key", "value"):
        name = f"base_model.model.bert.encoder.layer.1.attention.self.{proj}.lora_B.default.weight"
        block = rows_of(layout, hm.head_index, name)
        assert block.shape == (32, RANK)
        for row in range(32):
            # Layer 1 is the second module: its heads are 4..7; row r belongs to head r // dh.
            assert (block[row] == 4 + row // dh).all()
        a_name = name.replace("lora_B", "lora_A")
        assert (hm.head_index[layout.slice_of(a_name)] == -1).all()
    assert (hm.head_index[layout.element_task_head_mask()] == -1).all()
    assert hm.modules[0].name == "base_model.model.bert.encoder.layer.0.attention.self"
    # Per head: 3 projections x dh rows x r columns.
    counts = np.bincount(hm.head_index[hm.head_index >= 0])
    assert (counts == 3 * dh * RANK).all()


def test_gpt2_fused_c_attn_rows_by_hand() -> None:
    bundle = build("tiny-gpt2")
    layout, hm = bundle.layout, bundle.head_map
    d, dh = 32, 8
    name = "base_model.model.transformer.h.0.attn.c_attn.lora_B.default.weight"
    block = rows_of(layout, hm.head_index, name)
    assert block.shape == (3 * d, RANK)
    for segment in range(3):  # q, k, v
        for h in range(4):
            rows = slice(segment * d + h * dh, segment * d + (h + 1) * dh)
            assert (block[rows] == h).all()


def test_gpt2_fused_rows_drive_the_right_output_columns() -> None:
    # Checks the orientation under fan_in_fan_out: perturbing head 2's rows of B must change
    # only head 2's q, k and v columns of c_attn's output.
    bundle = build("tiny-gpt2")
    layer = bundle.model.get_base_model().transformer.h[0].attn.c_attn
    layer.eval()
    x = torch.randn(2, 5, 32)
    flat = bundle.layout.get_flat(bundle.model)
    flat += torch.randn_like(flat)  # make A generic
    bundle.layout.set_flat(bundle.model, flat)
    with torch.no_grad():
        before = layer(x)
        name = "base_model.model.transformer.h.0.attn.c_attn.lora_B.default.weight"
        owned = bundle.head_map.head_index[bundle.layout.slice_of(name)] == 2
        flat[bundle.layout.slice_of(name)][torch.from_numpy(owned)] += 1.0
        bundle.layout.set_flat(bundle.model, flat)
        changed = (layer(x) - before).abs().amax(dim=(0, 1)) > 0
    expected = torch.zeros(96, dtype=torch.bool)
    for segment in range(3):
        expected[segment * 32 + 16 : segment * 32 + 24] = True
    assert torch.equal(changed, expected)


def test_t5_small_sized_has_18_modules_of_three_kinds() -> None:
    # T5-small's shape (vocab shrunk, which LoRA does not touch): method-spec "LoRA placement"
    # gives 18 x 48 x 2 x 512 = 884,736 LoRA parameters and 144 heads.
    config = T5Config(vocab_size=64, d_model=512, d_kv=64, d_ff=64, num_layers=6, num_decoder_layers=6, num_heads=8)
    torch.manual_seed(0)
    backbone = AutoModelForSeq2SeqLM.from_config(config)
    model = Lora(rank=16).wrap(backbone, kind="generation", task_head=None, seed=0)
    layout = TrainableLayout.from_model(model)
    hm = head_map_from_groups(lora_head_groups(model, layout))
    kinds = [m.kind for m in hm.modules]
    assert len(kinds) == 18
    assert kinds.count("encoder_self") == kinds.count("decoder_self") == kinds.count("cross") == 6
    assert kinds[:6] == ["encoder_self"] * 6 and kinds[6:8] == ["decoder_self", "cross"]
    assert hm.num_heads_total == 144
    assert layout.numel == 884_736
    # All of A (half) is shared; B (the other half) is split evenly over the 144 heads.
    assert (hm.head_index == -1).sum() == layout.numel // 2
    assert (np.bincount(hm.head_index[hm.head_index >= 0]) == 3 * 64 * 16).all()


def test_element_mask() -> None:
    bundle = build("tiny-roberta")
    hm = bundle.head_map
    keep = np.zeros(hm.num_heads_total, dtype=bool)
    keep[[1, 6]] = True
    mask = hm.element_mask(keep)
    assert mask.shape == hm.head_index.shape and mask.dtype == bool
    assert mask[hm.head_index == -1].all()
    assert mask[np.isin(hm.head_index, [1, 6])].all()
    assert not mask[(hm.head_index >= 0) & ~np.isin(hm.head_index, [1, 6])].any()
    assert hm.element_mask(np.ones(hm.num_heads_total, bool)).all()
    with pytest.raises(ValueError, match="head_mask"):
        hm.element_mask(np.ones(3, bool))


@pytest.mark.parametrize(
    "name,targets,culprit",
    [
        ("tiny-bert", ("query", "key", "value", "dense"), "dense"),  # output projection + MLP
        ("tiny-t5", ("q", "k", "v", "o"), ".o"),  # T5's output projection
        ("tiny-distilbert", ("q_lin", "lin1"), "lin1"),  # MLP
    ],
)
def test_lora_on_unsupported_target_is_an_error(name: str, targets: tuple[str, ...], culprit: str) -> None:
    with pytest.raises(ValueError, match=f"LoRA on '.*{culprit}' cannot be mapped to attention heads"):
        build(name, targets)


def test_unknown_attention_module_is_an_error() -> None:
    class Attention(torch.nn.Module):  # a q projection whose parent declares no head geometry
        def __init__(self) -> None:
            super().__init__()
            self.query = torch.nn.Linear(8, 8)

    model = get_peft_model(torch.nn.Sequential(Attention()), LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(ValueError, match="Attention exposes no head count"):
        lora_head_groups(model, TrainableLayout.from_model(model))
