"""experiments/table4.py: every (row, method) is a valid config, and the table's cells by hand."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from fedmpi.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _table4():
    sys.path.insert(0, str(REPO / "experiments"))
    spec = importlib.util.spec_from_file_location("table4", REPO / "experiments" / "table4.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("table4", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


T4 = _table4()


@pytest.mark.parametrize("row", list(T4.ROWS))
@pytest.mark.parametrize("method", list(T4.METHODS))
def test_every_run_is_a_valid_config(row, method, tmp_path):
    args = T4.build_parser().parse_args(["--output-dir", str(tmp_path)])
    args.output_dir = tmp_path
    argv = T4.launch_command(T4.Job(row, method, 0), args)
    cfg = load_config(overrides=argv[argv.index("fedmpi.launch") + 1 :])
    assert cfg.server.selection == ("random" if method == "b1" else "loss")
    assert cfg.data.source == ("e2e_nlg" if row == "gpt2" else "sick")


def _summary(row, method, seed, final, rouge1=math.nan, rouge2=math.nan, upload=10.0, seconds=0.5):
    return {"run": f"{row}-{method}-{seed}", "row": row, "method": method, "seed": seed,
            "metric": "rougeL" if row == "gpt2" else "accuracy", "final": final, "rouge1": rouge1, "rouge2": rouge2,
            "upload_kib": upload, "seconds_per_client_round": seconds, "num_heads": 8}


def test_table_cells_by_hand():
    cells = T4.table_cells([
        _summary("gpt2", "ours", 0, 0.20, 0.30, 0.10, upload=5.5, seconds=1.0),
        _summary("gpt2", "ours", 1, 0.40, 0.50, 0.20, upload=5.5, seconds=3.0),
        _summary("t5", "b1", 0, 0.625, upload=72.0),
    ])  # fmt: skip
    assert cells[0][:5] == ["T5 (tiny, encoder-decoder) / SICK", "B1 FedAvg", "1", "8", "62.5"]
    assert cells[0][5:8] == ["-", "-", "-"]
    gpt2 = cells[1]
    assert gpt2[1] == "Ours" and gpt2[2] == "2" and gpt2[4] == "-"
    # mean ± sample sd (ddof=1) in percent: R1 .3/.5, R2 .1/.2, RL .2/.4
    assert gpt2[5:8] == ["40.0 ± 14.1", "15.0 ± 7.1", "30.0 ± 14.1"]
    assert gpt2[8] == "5.5 ± 0.0" and gpt2[9] == "2.000 ± 1.414"
