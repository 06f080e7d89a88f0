"""The paper's figures as analyze commands, on result files of real short runs (tiny BERT, 2 rounds)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY_RUN, run_here

from fedmpi import results_schema as rs
from fedmpi.analyze import load_run, main
from fedmpi.figures import method_label, round_distances, sparsity_of

RUNS = {
    "b1": ["strategy.name=fedavg"],
    "ours50": ["strategy.name=head_pruning", "strategy.sparsity=0.5"],
    "ours75-dir": ["strategy.name=head_pruning", "strategy.sparsity=0.75", "data.partition=dirichlet",
                   "data.dirichlet_alpha=0.1", "strategy.importance_exclude=eos+bos"],
}


@pytest.fixture(scope="module")
def result_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return {name: run_here([*TINY_RUN, "server.num_clients_per_round=2", *settings, f"output.dir={out}", f"output.name={name}"])
            for name, settings in RUNS.items()}


@pytest.mark.slow
@pytest.mark.parametrize("command,runs", [
    ("fig3", ["b1", "ours50", "ours75-dir"]), ("fig4", ["b1", "ours50", "ours75-dir"]),
    ("fig5", ["ours50", "ours75-dir"]), ("table5", ["b1", "ours50", "ours75-dir"]),
])  # fmt: skip
def test_figure_commands_write_a_png_and_print_numbers(result_files, tmp_path, capsys, command, runs):
    png = tmp_path / f"{command}.png"
    assert main([command, *(str(result_files[r]) for r in runs), "--out", str(png)]) == 0
    printed = capsys.readouterr().out
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert f"plot: {png}" in printed
    if command == "fig4":
        assert "50%" in printed and "75%" in printed and "0%" in printed
    if command == "table5":
        assert "dir(0.1)" in printed and "iid" in printed


@pytest.mark.slow
def test_labels_and_distances_from_real_runs(result_files):
    runs = {k: load_run(v) for k, v in result_files.items()}
    assert method_label(runs["b1"]) == "B1 / random"
    assert method_label(runs["ours75-dir"]) == "Ours (importance_exclude=eos+bos) / random"
    rounds, distances = round_distances(runs["ours50"])
    np.testing.assert_array_equal(rounds, [1, 2])
    # Fig. 5 is over every head's measured score; the upload holds only the kept heads' (0 for the others).
    c = runs["ours50"].clients
    measured, uploaded, kept = (c[k].astype(np.float64) for k in (rs.CLIENT_MEASURED_IMPORTANCE, rs.CLIENT_IMPORTANCE,
                                                                  rs.CLIENT_GROUP_MASK))  # fmt: skip
    kept = kept.astype(bool)
    assert (~kept).any() and (measured[~kept] > 0).all() and (uploaded[~kept] == 0).all()
    np.testing.assert_array_equal(measured[kept], uploaded[kept])
    assert distances[0] == pytest.approx(np.linalg.norm(measured[0] - measured[1]), rel=1e-6)
    assert distances[0] != pytest.approx(np.linalg.norm(uploaded[0] - uploaded[1]), rel=1e-6)


def test_figures_need_no_torch():
    code = "import sys; sys.modules['torch'] = None; import fedmpi.figures, fedmpi.analyze"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("strategy", "want"), [
    ({"name": "fedavg"}, 0.0),
    ({"name": "head_pruning", "sparsity": 0.75}, 0.75),
    ({"name": "ffa_lora", "head_pruning": {"sparsity": 0.5}}, 0.5),
    ({"name": "fedex_lora", "head_pruning": None}, 0.0),
])  # fmt: skip
def test_fig4_reads_the_sparsity_setting_of_every_pruning_strategy(strategy, want):
    class Run:
        config = {"strategy": strategy}

    assert sparsity_of(Run()) == want
