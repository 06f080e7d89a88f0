"""experiments/table4.py: every (row, method) is a valid config, and the table's cells by hand."""

from __future__ import annotations

import math

import pytest
from conftest import load_experiment

from fedmpi.config import load_config


T4 = load_experiment("table4")


@pytest.mark.parametrize("row", list(T4.ROWS))
@pytest.mark.parametrize("method", list(T4.METHOD_LABELS))
def test_every_run_is_a_valid_config(row, method):
    cfg = load_config(overrides=list(T4.cell_job(row, method, 0, 0.9).overrides))
    assert cfg.server.selection == ("random" if method == "b1" else "loss")
    assert cfg.data.source == ("e2e_nlg" if row == "gpt2" else "sick")
    assert cfg.strategy.name == ("fedavg" if method == "b1" else "head_pruning")


def _summary(row, method, seed, final, rouge1=math.nan, rouge2=math.nan, upload=10.0, seconds=0.5):
    return {"row": row, "method": method, "seed": seed, "metric": "rougeL" if row == "gpt2" else "accuracy",
            "final": final, "rouge1": rouge1, "rouge2": rouge2, "upload_kib": upload, "client_seconds": seconds}


def test_table_cells_by_hand():
    rows, pairs = T4.tables([
        _summary("gpt2", "ours", 0, 0.20, 0.30, 0.10, upload=5.5, seconds=1.0),
        _summary("gpt2", "ours", 1, 0.40, 0.50, 0.20, upload=5.5, seconds=3.0),
        _summary("gpt2", "b1", 0, 0.10, 0.20, 0.05, upload=16.0, seconds=2.0),
        _summary("gpt2", "b1", 1, 0.20, 0.30, 0.10, upload=16.0, seconds=2.0),
        _summary("t5", "b1", 0, 0.625, upload=72.0),
    ])  # fmt: skip
    assert rows[0] == ["T5 (tiny, encoder-decoder) / SICK", "B1 FedAvg", "1", "62.5", "-", "-", "-", "72.0", "0.500"]
    ours = rows[2]
    assert ours[:4] == ["GPT-2 (tiny, decoder-only) / E2E", "Ours", "2", "-"]
    # mean ± sample sd (ddof=1) in percent: R1 .3/.5, R2 .1/.2, RL .2/.4
    assert ours[4:] == ["40.0 ± 14.1", "15.0 ± 7.1", "30.0 ± 14.1", "5.5 ± 0.0", "2.000 ± 1.414"]
    # Ours - B1 per seed: +0.10 and +0.20 -> mean 15 pts; upload 5.5 / 16; seconds 2 / 2.
    assert len(pairs) == 1 and pairs[0][1].startswith("15.0 ± 7.1") and pairs[0][2:] == ["0.344", "1.000"]
