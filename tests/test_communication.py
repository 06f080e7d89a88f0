"""The paper's communication column comes out of the code (Table 1-4, method-spec "LoRA placement").

Models are built from the real configs of T5-small, T5-base and BART-base on the meta
device (no weights, no download), wrapped with LoRA on q, k, v; the head map then says
which trainable elements are head-attached (B rows) and which are always sent (A).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, BartConfig, T5Config

from fedmpi.accounting import lora_upload_bytes_paper
from fedmpi.models import TrainableLayout
from fedmpi.peft_methods import Lora
from fedmpi.strategies.head_pruning import num_kept
from fedmpi.worker import UploadSizer

MIB = 2**20
T5_SMALL = dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8)
T5_BASE = dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12)
BART_BASE = dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12, decoder_attention_heads=12,
                 encoder_ffn_dim=3072, decoder_ffn_dim=3072)  # fmt: skip


def _adapter_split(config, rank: int) -> tuple[int, int, UploadSizer, int]:
    with torch.device("meta"):
        backbone = AutoModelForSeq2SeqLM.from_config(config)
        model = Lora(rank=rank).wrap(backbone, kind="generation", task_head=None, seed=0)
    layout = TrainableLayout.from_model(model)
    groups = Lora(rank=rank).head_groups(model, layout)
    index = groups.group_index
    task = layout.element_task_head_mask()
    adapter_dense = int(((index < 0) & ~task).sum())
    head_elements = int((index >= 0).sum())
    sizer = UploadSizer(groups, task)
    return adapter_dense, head_elements, sizer, groups.num_groups


@pytest.mark.parametrize(
    "config, rank, dense_mib, sparse_mib",
    [
        (T5Config(**T5_SMALL), 16, 3.375, 1.85625),
        (T5Config(**T5_SMALL), 8, 1.6875, 0.928125),
        (T5Config(**T5_SMALL), 4, 0.84375, 0.4640625),
        (T5Config(**T5_BASE), 16, 10.125, 5.56875),
        (BartConfig(**BART_BASE), 16, 5.0625, 2.784375),
    ],
    ids=["t5-small-r16", "t5-small-r8", "t5-small-r4", "t5-base-r16", "bart-base-r16"],
)
def test_paper_communication_figures(config, rank, dense_mib, sparse_mib):
    adapter_dense, head_elements, sizer, num_heads = _adapter_split(config, rank)
    assert adapter_dense == head_elements  # all of A vs all of B: the "0.55 x dense" of the paper
    assert lora_upload_bytes_paper(adapter_dense, head_elements, 0.0) / MIB == dense_mib
    assert lora_upload_bytes_paper(adapter_dense, head_elements, 0.9) / MIB == pytest.approx(sparse_mib, rel=1e-12)
    # What a client really reports: the same count, with whole heads kept (e.g. 14 of 144 on T5-small).
    assert sizer(None) / MIB == dense_mib
    assert sizer.download / MIB == dense_mib  # a client downloads every adapter element (no task head here)
    mask = np.zeros(num_heads, dtype=bool)
    mask[: num_kept(num_heads, 0.9)] = True
    expected = 4 * (adapter_dense + head_elements * mask.sum() / num_heads)
    assert sizer(mask) == expected


def test_t5_small_has_144_heads():
    *_, num_heads = _adapter_split(T5Config(**T5_SMALL), 16)
    assert num_heads == 144 and num_kept(num_heads, 0.9) == 14
