"""The shipped configs and the Table 1 experiment script: every config loads, the paper ones match
the paper's settings, and the table arithmetic is right on hand-computed numbers."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fedmpi.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
TABLE1_CELLS = [f"table1_{m}_{s}.yaml" for m in ("b1", "b2", "ours") for s in ("random", "loss")]


def _table1_module():
    spec = importlib.util.spec_from_file_location("table1", REPO / "experiments" / "table1.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("table1", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_loads(path):
    load_config(path)  # raises ConfigError naming the key on anything unknown or invalid


@pytest.mark.parametrize("scale", ["paper", "cpu"])
def test_table1_has_six_cells_that_differ_only_in_strategy_and_selection(scale):
    cfgs = {name: load_config(REPO / "configs" / scale / name) for name in TABLE1_CELLS}
    common = {name: cfg.model_dump(exclude={"strategy": True, "server": {"selection"}}) for name, cfg in cfgs.items()}
    assert len({repr(c) for c in common.values()}) == 1
    for name, cfg in cfgs.items():
        method, selection = name.removesuffix(".yaml").split("_")[1:]
        assert cfg.server.selection == selection
        s = cfg.strategy
        if method == "b1":
            assert s.name == "fedavg"
            continue
        assert (s.name, s.pruning, s.weighting) == {
            "b2": ("head_pruning", "random", "samples"),
            "ours": ("head_pruning", "importance", "importance"),
        }[method]
        assert s.sparsity == 0.9 and s.mask_timing == "post_train"


@pytest.mark.parametrize("name", TABLE1_CELLS)
def test_paper_configs_have_the_papers_settings(name):
    cfg = load_config(REPO / "configs" / "paper" / name)
    assert cfg.model.name == "t5-small"
    assert cfg.data.source == "multinli" and cfg.data.partition == "iid"
    assert (cfg.data.num_clients, cfg.server.num_clients_per_round, cfg.server.num_rounds) == (100, 2, 100)
    assert (cfg.client.batch_size, cfg.client.lr, cfg.client.num_epochs) == (80, 5e-4, 1)
    assert cfg.data.max_length == 512
    assert cfg.peft.lora.rank == 16 and cfg.peft.lora.target_modules == ("q", "k", "v")
    assert cfg.server.eval_every == 1
    assert cfg.strategy.name == "fedavg" or cfg.strategy.sparsity == 0.9


def test_cpu_configs_use_local_data_and_the_packaged_model():
    for name in TABLE1_CELLS:
        cfg = load_config(REPO / "configs" / "cpu" / name)
        assert cfg.model.name == "minilm"
        assert cfg.data.source in ("20newsgroups", "embedded")
        if cfg.data.path is not None:
            assert (REPO / cfg.data.path).is_dir() or not (REPO.parent / "shared").exists()
        # Eq. 9 explores C/K rounds before it ranks by loss: leave rounds for it to do so.
        assert cfg.server.num_rounds >= 2 * cfg.data.num_clients // cfg.server.num_clients_per_round


def test_table1_help():
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "table1.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for flag in ("--scale", "--seeds", "--overrides", "--ranks", "--output-dir", "--target"):
        assert flag in done.stdout


def _summary(method, selection, seed, final, best, reached, upload=0.5, seconds=2.0, sparsity=0.9):
    return {"run": f"{method}-{selection}-{seed}", "method": method, "selection": selection, "seed": seed,
            "complete": True, "final": final, "best": best, "rounds_to_target": reached, "sparsity": sparsity,
            "upload_mib": upload, "seconds_per_round": seconds}


def test_table_rows_mean_and_sample_sd_by_hand():
    t1 = _table1_module()
    summaries = [
        _summary("ours", "loss", 0, 0.50, 0.60, 4, seconds=1.0),
        _summary("ours", "loss", 1, 0.70, 0.80, None, seconds=3.0),
        _summary("ours", "loss", 2, 0.60, 0.70, 8, seconds=2.0),
        _summary("b1", "random", 0, 0.40, 0.40, 2, upload=0.844, sparsity=0.0),
    ]
    rows = t1.cell_rows(summaries)
    assert [(r["method"], r["selection"]) for r in rows] == [("b1", "random"), ("ours", "loss")]  # table order
    ours = rows[1]
    assert ours["num_seeds"] == 3
    assert ours["final"] == pytest.approx(0.6) and ours["final_sd"] == pytest.approx(0.1)  # sd of .5,.7,.6 (ddof=1)
    assert ours["best"] == pytest.approx(0.7) and ours["best_sd"] == pytest.approx(0.1)
    assert ours["seconds_per_round"] == pytest.approx(2.0) and ours["seconds_per_round_sd"] == pytest.approx(1.0)
    # rounds to target over the 2 seeds that reached it: mean 6, sd sqrt(((4-6)^2 + (8-6)^2) / 1) = 2.83
    assert ours["rounds_to_target"] == pytest.approx(6.0)
    assert ours["rounds_to_target_sd"] == pytest.approx(math.sqrt(8))
    assert ours["num_reached"] == 2
    b1 = rows[0]
    assert b1["final"] == pytest.approx(0.4) and math.isnan(b1["final_sd"])  # one seed: no spread
    assert b1["upload_mib"] == pytest.approx(0.844) and b1["sparsity"] == 0.0
    cells = t1.table_cells(rows)
    assert cells[1][3] == "60.00 ± 10.00" and cells[1][5] == "6.0 ± 2.8 (2/3 reached)"


def test_paired_differences_by_hand():
    t1 = _table1_module()
    summaries = [
        _summary("ours", "random", 0, 0.50, 0.55, 3), _summary("b2", "random", 0, 0.45, 0.50, 5),
        _summary("ours", "random", 1, 0.60, 0.65, 4), _summary("b2", "random", 1, 0.40, 0.45, None),
        _summary("ours", "random", 2, 0.30, 0.35, None),  # no B2 partner for seed 2: left out
        _summary("b1", "loss", 0, 0.70, 0.70, 2), _summary("b1", "random", 0, 0.75, 0.80, 2),
    ]
    diffs = {d["comparison"]: d for d in t1.paired_differences(summaries)}
    ours_b2 = diffs["Ours - B2 (random selection)"]
    assert ours_b2["num_seeds"] == 2
    # per-seed final differences +0.05 and +0.20: mean 0.125, sd |0.15| / sqrt(2)
    assert ours_b2["final"].mean == pytest.approx(0.125)
    assert ours_b2["final"].sd == pytest.approx(0.15 / math.sqrt(2))
    # t(0.975, df=1) = 12.706: 0.125 -+ 12.706 * 0.1061 / sqrt(2)
    assert ours_b2["final"].ci == pytest.approx((0.125 - 12.7062 * 0.075, 0.125 + 12.7062 * 0.075), rel=1e-4)
    assert ours_b2["rounds_to_target"].mean == pytest.approx(-2.0) and ours_b2["rounds_to_target"].num == 1
    assert ours_b2["wins"] == 2
    loss_b1 = diffs["loss - random (B1 FedAvg)"]
    assert loss_b1["final"].mean == pytest.approx(-0.05) and loss_b1["best"].mean == pytest.approx(-0.10)
    assert loss_b1["rounds_to_target"].mean == 0.0 and loss_b1["wins"] == 0
    assert "Ours - B2 (loss selection)" not in diffs  # no runs of that pair


def test_method_is_read_from_the_resolved_config():
    t1 = _table1_module()
    assert t1.method_of({"strategy": {"name": "fedavg", "pruning": "importance"}}) == "b1"
    assert t1.method_of({"strategy": {"name": "head_pruning", "pruning": "random"}}) == "b2"
    assert t1.method_of({"strategy": {"name": "head_pruning", "pruning": "importance"}}) == "ours"
