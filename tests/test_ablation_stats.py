"""experiments/ablation.py: the protocol's stability rule and the statistics, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import load_experiment


AB = load_experiment("ablation")


@pytest.mark.parametrize(
    ("curve", "stable"),
    [
        ([0.04, 0.06, 0.26, 0.33, 0.38, 0.43, 0.44, 0.43], True),  # rises, ends within 0.02 of its best
        ([0.29, 0.54, 0.54, 0.54, 0.54, 0.54, 0.54, 0.54], False),  # stuck on the majority class from round 1
        ([0.04, 0.10, 0.30, 0.45, 0.40, 0.42, 0.41, 0.40], False),  # ends 0.05 below its best
        ([0.04, 0.10, 0.30, 0.45, 0.10, 0.44, 0.44, 0.45], False),  # falls back to chance after its best
    ],
)
def test_is_stable(curve, stable):
    assert AB.is_stable(np.array(curve), tolerance=0.02, min_gain=0.05) is stable


def test_mean_sd_ci_by_hand():
    s = AB.mean_sd_ci([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == 1.0 and s["n"] == 3
    assert s["ci"] == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)  # t(0.975, 2 dof) = 4.303 (3 decimals) * sd / sqrt(n)
    assert math.isnan(AB.mean_sd_ci([1.0])["ci"])


def test_paired_differences_match_seeds_and_selection():
    rows = [{"method": m, "selection": sel, "seed": s, "final": v}
            for m, sel, s, v in [("Ours", "loss", 0, 0.40), ("Ours", "loss", 1, 0.50), ("B2", "loss", 0, 0.30),
                                 ("B2", "loss", 1, 0.45), ("B2", "loss", 2, 0.9), ("B2", "random", 1, 0.0)]]
    d = AB.paired(rows, "Ours", "B2", "final", "loss")
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.075)  # seed 2 has no Ours run: not paired
    assert AB.paired(rows, "Ours", "B2", "final", "random")["n"] == 0  # never across selection rules
    assert AB.verdict({"n": 3, "mean": 0.1, "ci": 0.05}) == "holds (CI above 0)"
    assert AB.verdict({"n": 3, "mean": -0.1, "ci": 0.05}) == "reversed (CI below 0)"
    assert AB.verdict({"n": 3, "mean": 0.01, "ci": 0.05}) == "not shown (CI contains 0)"


def test_mean_curve_joins_evaluated_rounds_only():
    sweep = load_experiment("sweep")
    nan = math.nan
    a = (np.arange(5), np.array([0.1, nan, 0.3, nan, 0.5]))
    b = (np.arange(4), np.array([0.3, nan, 0.5, 0.6]))  # shorter run; round 3 evaluated by b only
    rounds, mean = sweep.mean_curve([a, b])
    assert rounds.tolist() == [0, 2]
    assert mean.tolist() == pytest.approx([0.2, 0.4])


def test_curve_numbers_skip_unevaluated_rounds():
    sweep = load_experiment("sweep")
    nan = math.nan
    nums = sweep.curve_numbers(np.array([0.1, nan, 0.6, nan, 0.2, 0.4]), last_k=2)  # evaluated: 0.1 0.6 0.2 0.4
    assert nums == pytest.approx({"final": 0.4, "best": 0.6, "last_k": 0.3})
    assert math.isnan(sweep.curve_numbers(np.array([nan, nan]), last_k=5)["last_k"])


def test_results_section_replaces_only_its_own_block():
    rs = load_experiment("results_section")
    text = ("intro\n<!-- ablation-results:begin -->\nold A\n<!-- ablation-results:end -->\nmiddle\n"
            "<!-- ablation-results:every2:begin -->\nold B\n<!-- ablation-results:every2:end -->\nend\n")
    new = rs.replace_between_markers(text, "new B", "every2")
    assert "old A" in new and "old B" not in new and "new B" in new and new.endswith("end\n")
    assert rs.replace_between_markers(text, "new A") == text.replace("old A", "new A")
    with pytest.raises(ValueError, match="ablation-results:sick:begin"):
        rs.replace_between_markers(text, "x", "sick")
