"""Paper Table 1 (ablation of head pruning x client selection): run the six cells over seeds, then tabulate.

The cells are configs/<scale>/table1_{b1,b2,ours}_{random,loss}.yaml. Each (cell, seed) is one
``python -m fedmpi.launch`` run (under ``mpiexec -n N`` with --ranks N) writing
<output-dir>/table1_<cell>_<selection>-s<seed>.h5 and a .log beside it; a run whose result file is
already complete is skipped, so an interrupted sweep resumes where it stopped. The table part reads
the files with fedmpi.analyze (no torch, no MPI) and writes table.md / table.csv / runs.csv there.

    python experiments/table1.py --scale cpu --seeds 0 1 2 [--jobs 2] [--overrides server.num_rounds=8]
    python experiments/table1.py --scale paper --seeds 0 1 2 --ranks 2
    python experiments/table1.py --scale cpu --seeds 0 1 --table-only
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import (  # noqa: E402
    REPO, Job, is_complete, markdown_table, mean_std, paired, paired_cell, pm, run_sweep, write_csv,
)

from fedmpi.analyze import format_table, load_run, summarize  # noqa: E402

METHODS = ("b1", "b2", "ours")  # table order, as in the paper
SELECTIONS = ("random", "loss")
METHOD_LABELS = {"b1": "B1 FedAvg", "b2": "B2 FedAvg + random pruning", "ours": "Ours (importance pruning + Eq. 8)"}
# "Rounds to target": the paper's 70% on MultiNLI; 35% on the CPU-scale 20 Newsgroups task, which
# dense FedAvg reaches in the first half of its 16 rounds (see configs/cpu/).
DEFAULT_TARGET = {"paper": 0.70, "cpu": 0.35}


def cell_job(method: str, selection: str, seed: int, scale: str) -> Job:
    return Job(f"table1_{method}_{selection}-s{seed}", REPO / "configs" / scale / f"table1_{method}_{selection}.yaml",
               (f"seed={seed}",), {"method": method, "selection": selection, "seed": seed})


# --- the table (pure: per-run summaries in, rows out) --------------------------------------------


def method_of(config: dict[str, Any]) -> str:
    """The Table 1 cell's method, read from the run's resolved config."""
    strategy = config.get("strategy", {})
    if strategy.get("name") == "fedavg":
        return "b1"
    return "ours" if strategy.get("pruning") == "importance" else "b2"


def run_summary(path: Path, target: float) -> dict[str, Any]:
    """One run's numbers for the table: fedmpi.analyze.summarize plus the per-client-per-round figures."""
    run = load_run(path)
    s = summarize(run, target)
    training = run.rounds["round"] >= 1
    participations = int(run.rounds["num_selected"][training].sum())
    return {
        "run": s["run"],
        "method": method_of(run.config),
        "selection": s["selection"],
        "seed": int(run.config.get("seed", -1)),
        "complete": run.complete,
        "final": s["final_metric"],
        "best": s["best_metric"],
        "rounds_to_target": s["rounds_to_target"],
        "sparsity": float(run.rounds["sparsity"][training].mean()) if training.any() else math.nan,
        "upload_mib": s["upload_mib_paper"] / participations if participations else math.nan,
        # The median: on a shared machine a few rounds can stall (other jobs), which would drag a mean.
        "seconds_per_round": float(np.median(run.rounds["seconds"][training])) if training.any() else math.nan,
    }


def _rounds(r: int | None) -> float:
    return math.nan if r is None else float(r)


def cell_rows(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, selection) present: mean, sd over seeds. Rounds to target over the seeds
    that reached it, with how many did."""
    rows = []
    for method in METHODS:
        for selection in SELECTIONS:
            runs = [s for s in summaries if s["method"] == method and s["selection"] == selection]
            if not runs:
                continue
            row: dict[str, Any] = {"method": method, "selection": selection, "num_seeds": len(runs)}
            for key in ("final", "best", "sparsity", "upload_mib", "seconds_per_round"):
                row[key], row[f"{key}_sd"], _ = mean_std([s[key] for s in runs])
            row["rounds_to_target"], row["rounds_to_target_sd"], row["num_reached"] = mean_std(
                [_rounds(s["rounds_to_target"]) for s in runs])
            rows.append(row)
    return rows


def paired_differences(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours - B2 per selection rule, and loss - random per method: per-seed differences (same seed on both
    sides), then their mean and sd. Rounds to target only over seeds where both sides reached it."""
    by_key = {(s["method"], s["selection"], s["seed"]): s for s in summaries}
    pairs = [(f"Ours - B2 ({sel} selection)", ("ours", sel), ("b2", sel)) for sel in SELECTIONS]
    pairs += [(f"loss - random ({METHOD_LABELS[m].split(' (')[0]})", (m, "loss"), (m, "random")) for m in METHODS]
    out = []
    for label, a, b in pairs:
        seeds = sorted({seed for (m, sel, seed) in by_key if (m, sel) == a} & {seed for (m, sel, seed) in by_key if (m, sel) == b})
        if not seeds:
            continue
        row: dict[str, Any] = {"comparison": label, "num_seeds": len(seeds)}
        for key in ("final", "best", "rounds_to_target"):
            side = {k: {s: _rounds(by_key[(*k, s)][key]) if key == "rounds_to_target" else by_key[(*k, s)][key]
                        for s in seeds} for k in (a, b)}
            row[key] = paired(side[a], side[b])
        row["wins"] = sum(by_key[(*a, s)]["final"] > by_key[(*b, s)]["final"] for s in seeds)
        out.append(row)
    return out


TABLE_HEADER = ["method", "CS", "seeds", "final acc %", "best acc %", "rounds to target", "sparsity",
                "upload MiB/client/round", "s/round (median)"]


def table_cells(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The formatted cells of the main table, one list per row of cell_rows()."""
    out = []
    for r in rows:
        reached = pm(r["rounds_to_target"], r["rounds_to_target_sd"], digits=1)
        if r["num_reached"] < r["num_seeds"]:
            reached += f" ({r['num_reached']}/{r['num_seeds']} reached)"
        out.append([METHOD_LABELS[r["method"]], r["selection"], str(r["num_seeds"]), pm(r["final"], r["final_sd"], 100),
                    pm(r["best"], r["best_sd"], 100), reached, f"{r['sparsity']:.0%}", f"{r['upload_mib']:.3f}",
                    pm(r["seconds_per_round"], r["seconds_per_round_sd"], digits=1)])
    return out


COMPARISON_HEADER = ["comparison", "seeds", "Δ final acc (pts) [95% CI]", "Δ best acc (pts) [95% CI]",
                     "Δ rounds to target", "final: A > B"]


def comparison_cells(diffs: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [[d["comparison"], str(d["num_seeds"]), paired_cell(d["final"], 100), paired_cell(d["best"], 100),
             paired_cell(d["rounds_to_target"], digits=1), f"{d['wins']}/{d['num_seeds']} seeds"] for d in diffs]


def write_outputs(out_dir: Path, summaries: list[dict[str, Any]], rows: list[dict[str, Any]],
                  diffs: list[dict[str, Any]], target: float) -> None:
    flat_diffs = [{"comparison": d["comparison"], "num_seeds": d["num_seeds"], "wins": d["wins"],
                   **{f"{k}_{f}": getattr(d[k], f) for k in ("final", "best", "rounds_to_target") for f in ("mean", "sd", "num")}}
                  for d in diffs]
    for name, records in (("runs.csv", summaries), ("table.csv", rows), ("comparisons.csv", flat_diffs)):
        write_csv(out_dir / name, records)
    text = (f"# Table 1 (mean ± sd over seeds; rounds to accuracy >= {target:g})\n\n"
            f"{markdown_table(TABLE_HEADER, table_cells(rows))}\n\n"
            f"## Paired differences (A - B, same seed)\n\n{markdown_table(COMPARISON_HEADER, comparison_cells(diffs))}\n")
    (out_dir / "table.md").write_text(text)


# --- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python experiments/table1.py", description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=("cpu", "paper"), default="cpu", help="configs/<scale>/table1_*.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--overrides", nargs="*", default=[], metavar="key.sub=value", help="passed to every run")
    p.add_argument("--ranks", type=int, default=1, help="MPI processes per run (mpiexec -n N); 1: no mpiexec")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time on this machine (each gets cores/jobs threads)")
    p.add_argument("--output-dir", type=Path, help="default: results/table1/<scale>")
    p.add_argument("--target", type=float, help="accuracy for 'rounds to target' (default: 0.7 paper, 0.35 cpu)")
    p.add_argument("--table-only", action="store_true", help="run nothing; tabulate the result files there")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ranks < 1 or args.jobs < 1:
        raise SystemExit("--ranks and --jobs must be >= 1")
    args.output_dir = (args.output_dir or REPO / "results" / "table1" / args.scale).resolve()
    args.target = DEFAULT_TARGET[args.scale] if args.target is None else args.target
    jobs = [cell_job(m, sel, seed, args.scale) for seed in args.seeds for m in METHODS for sel in SELECTIONS]
    failed = 0 if args.table_only else run_sweep(jobs, args.output_dir, ranks=args.ranks, parallel=args.jobs,
                                                 overrides=args.overrides)
    paths = [args.output_dir / f"{job.name}.h5" for job in jobs]
    summaries = [run_summary(p, args.target) for p in paths if is_complete(p)]
    if not summaries:
        print(f"no complete result files in {args.output_dir}")
        return 1
    rows, diffs = cell_rows(summaries), paired_differences(summaries)
    write_outputs(args.output_dir, summaries, rows, diffs, args.target)
    print(f"\nTable 1 ({args.scale} scale, {len(summaries)}/{len(jobs)} runs; mean ± sd over seeds; "
          f"rounds to accuracy >= {args.target:g}; upload: fp32 MiB per client per round, paper convention)")
    print(format_table(table_cells(rows), TABLE_HEADER))
    print("\nPaired differences A - B over the same seeds (mean ± sd):")
    print(format_table(comparison_cells(diffs), COMPARISON_HEADER))
    print(f"\nwritten: {args.output_dir}/table.md, table.csv, comparisons.csv, runs.csv")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
