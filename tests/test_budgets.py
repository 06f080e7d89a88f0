"""Layer-finetuning budgets against hand-computed figures, and the block structure of real tiny models."""

from __future__ import annotations

import numpy as np
import pytest

from fedmpi.budgets import BudgetError, ModelSizes, TrainingShape, choose_backbone, plan, trainable_blocks
from fedmpi.devices import DeviceClass

# Two blocks of 100 weights, a 10-weight head, 50 other weights; h=4, f=8, a=2; b=2, s=3, fp32.
SIZES = ModelSizes(block_params=(100, 100), head_params=10, other_params=50, d_model=4, d_ff=8, num_heads=2)
SHAPE = TrainingShape(batch_size=2, seq_len=3, dtype_bytes=4)
SAMPLES = 5
# By hand: activations per block 2*3*(8*4 + 2*8) + 2*2*2*3^2 = 288 + 72 = 360 elements.
# Block forward 2*3*100 + 4*9*4 = 744 FLOPs; head forward 2*10 = 20; total weights 260.
#   n=0: memory (260 + 10*3) * 4 = 1160;           FLOPs/sample 1488 + 20 + 2*20 = 1548;         upload 40
#   n=1: memory (260 + 110*3 + 360) * 4 = 3800;    FLOPs/sample 1508 + 2*(744 + 20) = 3036;      upload 440
#   n=2: memory (260 + 210*3 + 720) * 4 = 6440;    FLOPs/sample 1508 + 2*(1488 + 20) = 4524;     upload 840
BY_HAND = {0: (1160, 1548, 40), 1: (3800, 3036, 440), 2: (6440, 4524, 840)}


@pytest.mark.parametrize("n", [0, 1, 2])
def test_plan_by_hand(n):
    p = plan(SIZES, SHAPE, n, SAMPLES)
    memory, flops_per_sample, upload = BY_HAND[n]
    assert (p.memory_bytes, p.flops, p.upload_bytes) == (memory, flops_per_sample * SAMPLES, upload)


@pytest.mark.parametrize(
    "device, expected",
    [
        (DeviceClass(name="big"), 2),
        (DeviceClass(name="mem", memory_bytes=4000), 1),
        (DeviceClass(name="mem_exact", memory_bytes=3800), 1),
        (DeviceClass(name="flops", flops_per_round=3036 * SAMPLES - 1), 0),
        (DeviceClass(name="upload", upload_bytes_per_round=839), 1),
        (DeviceClass(name="mixed", memory_bytes=1e6, flops_per_round=4524 * SAMPLES, upload_bytes_per_round=500), 1),
    ],
)
def test_largest_fitting_number_of_blocks(device, expected):
    assert trainable_blocks(SIZES, SHAPE, device, SAMPLES).num_blocks == expected


def test_budget_below_the_task_head_names_the_class():
    with pytest.raises(BudgetError, match="device class 'watch'.*memory_bytes needs 1160 > 1000"):
        trainable_blocks(SIZES, SHAPE, DeviceClass(name="watch", memory_bytes=1000), SAMPLES)


def test_backbone_choice_maximises_mean_blocks():
    deep = ModelSizes(block_params=(100,) * 4, head_params=10, other_params=50, d_model=4, d_ff=8, num_heads=2)
    devices = (DeviceClass(name="a", upload_bytes_per_round=900, share=0.5), DeviceClass(name="b", share=0.5))
    best, means = choose_backbone({"two": SIZES, "four": deep}, SHAPE, devices, SAMPLES)
    # upload 900 B: two blocks of either model (840 B); unlimited: 2 vs 4 -> means 2.0 and 3.0.
    assert best == "four" and means == {"two": 2.0, "four": 3.0}
    tight = (DeviceClass(name="a", memory_bytes=1200),)  # only the small model's head fits
    assert choose_backbone({"four": deep, "two": SIZES}, SHAPE, tight, SAMPLES)[0] == "two"


def test_sizes_and_block_groups_of_tiny_models():
    from fedmpi.models.blocks import block_groups, block_prefixes, model_sizes
    from fedmpi.models.build import _load_backbone
    from fedmpi.models.params import TrainableLayout

    _, bert, _ = _load_backbone("tiny-bert", kind="classification", num_labels=3, seed=0)
    assert block_prefixes(bert) == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    sizes = model_sizes(bert, ["classifier"], bert.config)
    assert sizes.total_params == sum(p.numel() for p in bert.parameters())
    assert sizes.head_params == 32 * 3 + 3 and sizes.block_params[0] == sum(
        p.numel() for p in bert.bert.encoder.layer[0].parameters()
    )
    for p in bert.bert.embeddings.parameters():
        p.requires_grad_(False)
    layout = TrainableLayout.from_model(bert)
    groups = block_groups(bert, layout)
    assert groups.num_groups == 2 and groups.group_sizes().tolist() == list(sizes.block_params)
    assert int((groups.group_index == -1).sum()) == layout.numel - sum(sizes.block_params)

    _, t5, _ = _load_backbone("tiny-t5", kind="classification", num_labels=3, seed=0)
    assert block_prefixes(t5) == [
        "transformer.encoder.block.0", "transformer.encoder.block.1",
        "transformer.decoder.block.0", "transformer.decoder.block.1",
    ]


def test_lora_variant_counts_only_adapters_as_trained():
    lora = ModelSizes(block_params=(100, 100), head_params=10, other_params=50, d_model=4, d_ff=8, num_heads=2,
                      block_trainable=(6, 6))
    p = plan(lora, SHAPE, 1, 1)
    # memory (260 + (6 + 10) * 3 + 360) * 4 = 668 * 4 = 2672; upload (6 + 10) * 4 = 64.
    # FLOPs: forward 1488 + 20; backward of one block 2*3*100 + 8*9*4 + 2*3*6 = 924, of the head 40.
    assert (p.memory_bytes, p.upload_bytes, p.flops) == (2672, 64, 1508 + 924 + 40)
