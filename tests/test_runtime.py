"""Where a rank computes: device choice by hand, bf16 autocast on the CPU, device seconds on the CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmpi import runtime
from fedmpi.client import LocalTrainer
from fedmpi.config import ClientConfig, RuntimeConfig
from fedmpi.data import TextSplit, tokenize_split
from fedmpi.evaluation import eval_examples
from fedmpi.measure import ClientRoundMeter
from fedmpi.models import build_model
from fedmpi.peft_methods import Lora


@pytest.mark.parametrize(
    ("local_size", "num_devices", "expected"),
    [
        (1, 1, [0]),
        (1, 4, [0]),  # one rank, four GPUs: it takes the first
        (4, 4, [0, 1, 2, 3]),  # one rank per GPU
        (2, 4, [0, 1]),
        (4, 1, [0, 0, 0, 0]),  # four ranks share one GPU
        (4, 2, [0, 0, 1, 1]),  # contiguous blocks of ranks per GPU
        (3, 2, [0, 0, 1]),
        (5, 2, [0, 0, 0, 1, 1]),
        (8, 3, [0, 0, 0, 1, 1, 1, 2, 2]),
    ],
)
def test_device_index_by_hand(local_size, num_devices, expected):
    assert [runtime.device_index(r, local_size, num_devices) for r in range(local_size)] == expected


def test_device_index_rejects_impossible_placements():
    with pytest.raises(ValueError, match="num_devices=0"):
        runtime.device_index(0, 1, 0)
    with pytest.raises(ValueError, match="local rank 2"):
        runtime.device_index(2, 2, 1)


def test_cpu_device_and_no_device_seconds():
    assert runtime.select_device(RuntimeConfig(device="cpu"), 3, 4) == torch.device("cpu")
    with ClientRoundMeter(torch.nn.Linear(2, 2), torch.device("cpu")) as meter:
        pass
    assert meter.usage.seconds >= 0 and math.isnan(meter.usage.device_seconds)  # CUDA events only


def test_bf16_training_on_cpu_stays_finite_and_keeps_float32_state():
    bundle = build_model("tiny-bert", kind="classification", num_labels=2, method=Lora(rank=4), seed=0)
    rng = np.random.default_rng(0)
    split = TextSplit(inputs=[f"word {i} " * int(rng.integers(1, 6)) for i in range(12)],
                      labels=rng.integers(0, 2, 12).astype(np.int64), targets=None)  # fmt: skip
    train = tokenize_split(split, bundle.tokenizer, kind="classification", max_length=16)
    trainer = LocalTrainer(bundle, train, ClientConfig(batch_size=4, lr=1e-2), device=torch.device("cpu"), seed=0,
                           confidence=None, groups=bundle.groups, precision="bf16")  # fmt: skip
    start = bundle.layout.get_flat(bundle.model)
    result = trainer.train(np.arange(12), start, 1, 0, record_importance=False)
    assert np.isfinite(result.train_loss) and np.all(np.isfinite(result.delta)) and np.abs(result.delta).max() > 0
    assert result.delta.dtype == np.float32
    assert all(p.dtype == torch.float32 for p in bundle.model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="precision"):
        runtime.autocast(torch.device("cpu"), "fp16")


def test_eval_subset_is_fixed_by_the_seed():
    np.testing.assert_array_equal(eval_examples(5, None, 0), np.arange(5))
    np.testing.assert_array_equal(eval_examples(5, 9, 0), np.arange(5))
    a, b, c = eval_examples(100, 10, 0), eval_examples(100, 10, 0), eval_examples(100, 10, 1)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 10 and len(np.unique(a)) == 10 and np.all(np.diff(a) > 0) and not np.array_equal(a, c)
