"""The runs behind the paper's Fig. 3, Fig. 4, Fig. 5 and Table 5, then the figure commands on them.

    python experiments/figures.py fig3   [--seeds 0 1 2] [--output-dir results/figures] [--jobs 2] [-- overrides]
    python experiments/figures.py fig4   # sparsity sweep 0-95% (Ours, random selection) + FedAvg as 0%
    python experiments/figures.py fig5   # Ours, IID vs Dirichlet(0.1), 2 clients per round
    python experiments/figures.py table5 # B1, B2, Ours over Dirichlet alpha 0.1, 0.5, 1, 10 and IID

Every run starts from the CPU-scale Table 1 setting (configs/cpu/table1_*.yaml: MiniLM, 20
Newsgroups, 16 clients, 2 per round, 16 rounds); overrides after ``--`` apply to every run
(e.g. ``server.num_rounds=30 client.lr=2e-3``). Result files go to <output-dir>/<figure>/, the
PNG and the printed numbers come from ``python -m fedmpi.analyze <figure>``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import REPO, Job, complete_paths, run_sweep  # noqa: E402

CPU = REPO / "configs" / "cpu"
CELLS = {f"{m}_{s}": CPU / f"table1_{m}_{s}.yaml" for m in ("b1", "b2", "ours") for s in ("random", "loss")}
SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95)
ALPHAS = (0.1, 0.5, 1.0, 10.0)


def fig3_jobs(seeds: list[int]) -> list[Job]:
    return [Job(f"{cell}-s{seed}", cfg, (f"seed={seed}",)) for seed in seeds for cell, cfg in CELLS.items()]


def fig4_jobs(seeds: list[int]) -> list[Job]:
    jobs = [Job(f"b1-s{seed}", CELLS["b1_random"], (f"seed={seed}",)) for seed in seeds]
    jobs += [Job(f"ours-sp{int(100 * sp)}-s{seed}", CELLS["ours_random"], (f"seed={seed}", f"strategy.sparsity={sp}"))
             for seed in seeds for sp in SPARSITIES if sp > 0]
    return jobs


def fig5_jobs(seeds: list[int]) -> list[Job]:
    cfg = CELLS["ours_loss"]
    return [Job(f"ours-iid-s{seed}", cfg, (f"seed={seed}",)) for seed in seeds[:1]] + [
        Job(f"ours-dir0.1-s{seed}", cfg, (f"seed={seed}", "data.partition=dirichlet", "data.dirichlet_alpha=0.1"))
        for seed in seeds[:1]]


def table5_jobs(seeds: list[int]) -> list[Job]:
    jobs = []
    for seed in seeds:
        for method in ("b1", "b2", "ours"):
            cfg = CELLS[f"{method}_loss"]
            jobs.append(Job(f"{method}-iid-s{seed}", cfg, (f"seed={seed}",)))
            jobs += [Job(f"{method}-dir{a:g}-s{seed}", cfg, (f"seed={seed}", "data.partition=dirichlet",
                                                             f"data.dirichlet_alpha={a}")) for a in ALPHAS]
    return jobs


JOBS = {"fig3": fig3_jobs, "fig4": fig4_jobs, "fig5": fig5_jobs, "table5": table5_jobs}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("figure", choices=sorted(JOBS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir", type=Path, default=REPO / "results" / "figures")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (the cores are split between them)")
    args = parser.parse_args(argv)
    out = args.output_dir / args.figure
    jobs = JOBS[args.figure](args.seeds)
    run_sweep(jobs, out, parallel=args.jobs, overrides=extra)
    files = complete_paths(jobs, out)
    if not files:
        return 1
    cmd = [sys.executable, "-m", "fedmpi.analyze", args.figure, *map(str, files), "--out", str(out / f"{args.figure}.png")]
    return subprocess.call(cmd, cwd=REPO)


if __name__ == "__main__":
    raise SystemExit(main())
