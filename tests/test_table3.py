"""The paper's Table 3 (T5-small) from the PEFT methods' head maps, and its command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedmpi.peft_costs import PAPER_CONFIGS, main, report, upload_figures
from fedmpi.peft_methods import Full, Ia3, Lora, Prefix, Prompt

MIB, KIB = 2**20, 2**10
T5_SMALL = PAPER_CONFIGS["t5-small"]()
N_ATTN, N_FFN, D, D_FF = 18, 12, 512, 2048  # 6 encoder self + 6 decoder self + 6 cross; 12 FFNs


@pytest.mark.parametrize("rank,dense_mib,pruned_mib", [(16, 3.375, 1.85625), (8, 1.6875, 0.928125), (4, 0.84375, 0.4640625)])
def test_lora_upload(rank: int, dense_mib: float, pruned_mib: float) -> None:
    fig = upload_figures(T5_SMALL, Lora(rank=rank), f"lora-r{rank}", 0.9)
    assert fig.dense_bytes / MIB == dense_mib  # the paper's 3.375 / 1.6875 / 0.844
    assert fig.pruned_bytes / MIB == pytest.approx(pruned_mib, rel=1e-12)  # 1.856 / 0.928 / 0.464
    assert fig.ratio == pytest.approx(0.55)


def test_ia3_upload_168_kib_and_the_papers_84() -> None:
    fig = upload_figures(T5_SMALL, Ia3(), "ia3", 0.5)
    assert fig.num_adapter_elements == N_ATTN * 2 * D + N_FFN * D_FF  # k and v of every attention, wo's input
    assert fig.num_head_elements == N_ATTN * 2 * D
    assert fig.dense_bytes / KIB == 168
    assert fig.paper_convention_bytes / KIB == 84  # the paper halves the FFN vector too
    assert fig.pruned_bytes / KIB == 4 * (N_FFN * D_FF + 0.5 * N_ATTN * 2 * D) / KIB == 132  # the head map's own


@pytest.mark.parametrize("method", [Prompt(), Prefix()], ids=["prompt", "prefix"])
def test_virtual_token_methods_send_a_tenth(method) -> None:
    fig = upload_figures(T5_SMALL, method, method.name, 0.9)
    assert fig.num_head_elements == fig.num_adapter_elements  # every column belongs to a head
    assert fig.ratio == pytest.approx(0.10, abs=1e-12)
    slots = 1 if method.name == "prompt" else 6 * 2 * 2  # prefix: (self, cross) x (key, value) per decoder layer
    assert fig.num_adapter_elements == 20 * slots * D


def test_full_fine_tuning_ratio_from_the_head_map() -> None:
    # Heads own W_q, W_k, W_v rows and W_o columns: 4 d^2 per attention module (T5 has no biases).
    fig = upload_figures(T5_SMALL, Full(), "full", 0.9)
    assert fig.num_head_elements == N_ATTN * 4 * D * D
    assert fig.num_adapter_elements == 60_506_624  # every weight of t5-small (embeddings tied)
    assert fig.ratio == pytest.approx(1 - 0.9 * N_ATTN * 4 * D * D / 60_506_624)  # 0.719, not the paper's 0.55
    without_embeddings = upload_figures(T5_SMALL, Full(frozen_modules=("shared",)), "full", 0.9)
    assert without_embeddings.ratio == pytest.approx(0.614, abs=1e-3)  # still not 0.55 (accounting.md)


def test_report_prints_every_row_with_the_papers_ops() -> None:
    text = report("t5-small", "all")
    rows = {line.split()[0]: line for line in text.splitlines()[2:] if line and not line.startswith(" ")}
    assert list(rows) == ["lora-r16", "lora-r8", "lora-r4", "full", "ia3", "prompt", "prefix"]
    assert "3.375 MiB      1.856 MiB  0.550    33.07 G     8.47 G" in rows["lora-r16"]
    assert "38.70 G    21.76 G" in rows["ia3"] and "168.000 KiB" in rows["ia3"]
    assert "22.81 G     6.47 G" in rows["prompt"] and "23.80 G     6.73 G" in rows["prefix"]
    assert "41.07 G    10.63 G" in rows["full"] and "not reproducible from first principles" in rows["full"]
    assert "84.000 KiB  0.500" in text


def test_main_prints_one_method_and_rejects_unknown_ones(capsys) -> None:
    assert main(["--model", "t5-small", "--peft", "ia3"]) == 0
    out = capsys.readouterr().out
    assert "ia3" in out and "168.000 KiB" in out and "132.000 KiB" in out and "lora" not in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--peft", "adalora"])
    assert exit_info.value.code == 2 and "--peft must be one of" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line() -> None:
    out = subprocess.run([sys.executable, "-m", "fedmpi.accounting", "--model", "t5-small", "--peft", "prompt"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "prompt" in out and "40.000 KiB" in out and "0.100" in out
