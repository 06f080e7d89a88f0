"""The rigorous CPU-scale ablation (issue 9, part 5): methods x selection rules x seeds on real tasks.

Three steps, each resumable (complete result files are skipped):

    # 1. choose a stable protocol: dense FedAvg (B1) at a few learning rates and clients per round
    python experiments/ablation.py protocol --task 20news --lrs 5e-4 1e-3 2e-3 --clients-per-round 2 4 8
    # 2. the ablation at the chosen protocol
    python experiments/ablation.py run --task 20news --lr 1e-3 --clients-per-round 4 --rounds 24 --seeds 0 1 2
    # 3. the tables: mean, spread, final / best / last-k means, paired differences with 95% CIs
    python experiments/ablation.py report --task 20news [--last-k 5]

Methods: B1 (FedAvg), B2 (random pruning), Ours, and Ours with the importance options
(``eos+bos`` exclusion; ``eos+bos`` + eval-mode scoring of the uploaded model). Selection:
random, loss (Eq. 9) and cyclic where the config offers it (a rule the config rejects is
skipped with its error). Every run is the CPU-scale Table 1 setting (MiniLM, 64 tokens, 90%
sparsity) on the task, with the protocol's learning rate, clients per round and rounds.
A protocol is "stable" when B1 learns (its best exceeds round 1's accuracy by ``--min-gain``, so
a run stuck on the majority class is not stable), its final accuracy is within ``--tolerance``
of its best, and no evaluated round after the first third falls below half the best.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sweep import REPO, Job, complete_paths, confidence_interval, curve_numbers, mean_std, run_sweep

from fedmpi.analyze import ResultFileError, format_table, load_run, result_files
from fedmpi.config import ConfigError, load_config

DATA = REPO.parent / "shared" / "data"
TASKS: dict[str, tuple[str, ...]] = {
    "20news": ("data.source=20newsgroups", f"data.path={DATA / '20newsgroups'}", "data.max_train_samples=1920",
               "data.max_eval_samples=400"),
    # Sentence pairs (premise, hypothesis): SICK's official train / test split.
    "sick": ("data.source=sick", f"data.path={DATA / 'sick'}", "data.max_train_samples=1920",
             "data.max_eval_samples=400"),
}
COMMON = ("model.name=minilm", "peft.lora.rank=16", "data.max_length=64", "data.num_clients=16", "data.partition=iid",
          "client.batch_size=16", "server.eval_every=1")
PRUNING = ("strategy.name=head_pruning", "strategy.sparsity=0.9")
METHODS: dict[str, tuple[str, ...]] = {
    "B1": ("strategy.name=fedavg",),
    "B2": (*PRUNING, "strategy.pruning=random", "strategy.weighting=samples"),
    "Ours": (*PRUNING, "strategy.pruning=importance", "strategy.weighting=importance"),
    "Ours+eos+bos": (*PRUNING, "strategy.pruning=importance", "strategy.weighting=importance",
                     "strategy.importance_exclude=eos+bos"),
    "Ours+eos+bos+uploaded": (*PRUNING, "strategy.pruning=importance", "strategy.weighting=importance",
                              "strategy.importance_exclude=eos+bos", "strategy.score_on=uploaded"),
    # pruned_heads=removed needs masks before training; its accuracy is read against the same
    # pre-train masks with the pruned heads kept in the forward (frozen).
    "Ours+pre": (*PRUNING, "strategy.pruning=importance", "strategy.weighting=importance",
                 "strategy.mask_timing=pre_train"),
    "Ours+pre+removed": (*PRUNING, "strategy.pruning=importance", "strategy.weighting=importance",
                         "strategy.mask_timing=pre_train", "strategy.pruned_heads=removed"),
    # Which heads survive decides whether a removed-heads client still sees its input: random heads,
    # and importance without the [CLS]/BOS sinks.
    "B2+pre+removed": (*PRUNING, "strategy.pruning=random", "strategy.weighting=samples",
                       "strategy.mask_timing=pre_train", "strategy.pruned_heads=removed"),
    "Ours+eos+bos+pre+removed": (*PRUNING, "strategy.pruning=importance", "strategy.weighting=importance",
                                 "strategy.importance_exclude=eos+bos", "strategy.mask_timing=pre_train",
                                 "strategy.pruned_heads=removed"),
}
SELECTIONS = ("random", "loss", "cyclic")


# --- statistics (pure) ----------------------------------------------------------------------------


def mean_sd_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample sd (ddof=1) and the half-width of the 95% t confidence interval of the mean (sweep's statistics)."""
    mean, sd, n = mean_std(values)
    low, high = confidence_interval(values)
    return {"mean": mean, "sd": sd, "ci": (high - low) / 2 if n > 1 else math.nan, "n": n}


def is_stable(metric: np.ndarray, tolerance: float, min_gain: float) -> bool:
    """B1 rises steadily: it learns, ends near its best and never falls back.

    ``metric`` is the evaluated curve from round 0 (the initial model). The best must exceed
    round 1's value by ``min_gain`` (a run stuck on the majority class has a flat curve from
    round 1 on and is not "stable"), the final value must be within ``tolerance`` of the best,
    and no evaluation after the first third may fall below half the best.
    """
    m = metric[~np.isnan(metric)]
    if m.size < 3:
        return False
    late = m[m.size // 3 :]
    learns = m.max() >= m[1] + min_gain
    return bool(learns and m[-1] >= m.max() - tolerance and late.min() >= 0.5 * m.max())


def paired(rows: Sequence[dict[str, Any]], a: str, b: str, key: str, selection: str) -> dict[str, float]:
    """a - b under one selection rule, over the seeds both have: mean, sd, 95% CI. Rules are not pooled:
    two rules' runs of one seed share their data and initial model, so they are not independent pairs."""
    by = {(r["method"], r["seed"]): r[key] for r in rows if r["selection"] == selection}
    return mean_sd_ci([by[(a, seed)] - by[(b, seed)] for (m, seed) in by if m == a and (b, seed) in by])


def verdict(diff: dict[str, float]) -> str:
    """Plain words for a paired difference: which side the 95% CI lies on."""
    if diff["n"] < 2 or math.isnan(diff["ci"]):
        return "too few seeds to say"
    low, high = diff["mean"] - diff["ci"], diff["mean"] + diff["ci"]
    if low > 0:
        return "holds (CI above 0)"
    if high < 0:
        return "reversed (CI below 0)"
    return "not shown (CI contains 0)"


# --- runs -----------------------------------------------------------------------------------------


def job_name(task: str, method: str, selection: str, seed: int) -> str:
    return f"{task}_{method}_{selection}-s{seed}"


def protocol_overrides(args: argparse.Namespace, lr: float, clients: int) -> tuple[str, ...]:
    return (*COMMON, *TASKS[args.task], f"client.lr={lr}", f"server.num_clients_per_round={clients}",
            f"server.num_rounds={args.rounds}", *args.overrides)


def accepted(overrides: Sequence[str]) -> str | None:
    """None if the config accepts the overrides, else the error (an option fedmpi does not have yet)."""
    try:
        load_config(overrides=[o for o in overrides if not o.startswith("--")])
    except ConfigError as e:
        return str(e).replace("\n", " ")
    return None


def cmd_protocol(args: argparse.Namespace) -> int:
    jobs = []
    for lr in args.lrs:
        for k in args.clients_per_round:
            jobs.append(Job(f"{args.task}_protocol_lr{lr:g}_k{k}-s0", None,
                            (*protocol_overrides(args, lr, k), *METHODS["B1"], "server.selection=random")))
    out = args.output_dir / "protocol"
    run_sweep(jobs, out, parallel=args.jobs)
    files = complete_paths(jobs, out)
    rows = []
    for path in files:
        run = load_run(path)
        metric = run.rounds["eval_metric"].astype(float)
        nums = curve_numbers(metric, args.last_k)
        rows.append([run.name, f"{nums['final']:.4f}", f"{nums['best']:.4f}", f"{nums['last_k']:.4f}",
                     "stable" if is_stable(metric, args.tolerance, args.min_gain) else "UNSTABLE"])
    print(format_table(rows, header=["B1 run", "final", "best", f"last-{args.last_k}", "verdict"]))
    return 0


def ablation_jobs(args: argparse.Namespace) -> list[Job]:
    jobs = []
    for selection in args.selections:
        for method, settings in METHODS.items():
            if method not in args.methods:
                continue
            overrides = (*protocol_overrides(args, args.lr, args.clients_per_round), *settings,
                         f"server.selection={selection}")
            if (error := accepted(overrides)) is not None:
                print(f"skipped {args.task} {method} / {selection}: {error}")
                continue
            jobs += [Job(job_name(args.task, method, selection, seed), None, (*overrides, f"seed={seed}"))
                     for seed in args.seeds]
    return jobs


def cmd_run(args: argparse.Namespace) -> int:
    jobs = ablation_jobs(args)
    run_sweep(jobs, args.output_dir / args.task, parallel=args.jobs)
    files = complete_paths(jobs, args.output_dir / args.task)
    print(f"{len(files)} of {len(jobs)} runs complete in {args.output_dir / args.task}")
    return 0 if len(files) == len(jobs) else 1


# --- report ---------------------------------------------------------------------------------------


def collect(folder: Path, last_k: int) -> list[dict[str, Any]]:
    """One row per complete result file of the ablation: method, selection, seed, curve numbers."""
    rows = []
    for path in result_files(folder):
        try:
            run = load_run(path)
        except ResultFileError as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            continue
        if not run.complete or "_protocol_" in path.stem:
            continue
        task, method, rest = path.stem.split("_", 2)
        selection, seed = rest.rsplit("-s", 1)
        rows.append({"task": task, "method": method, "selection": selection, "seed": int(seed),
                     **curve_numbers(run.rounds["eval_metric"].astype(float), last_k)})
    return rows


def _pm(s: dict[str, float], scale: float = 100.0) -> str:
    if math.isnan(s["mean"]):
        return "-"
    sd = "" if math.isnan(s["sd"]) else f" ± {scale * s['sd']:.1f}"
    return f"{scale * s['mean']:.1f}{sd}"


def _ci(s: dict[str, float], scale: float = 100.0) -> str:
    if math.isnan(s["mean"]):
        return "-"
    ci = "" if math.isnan(s["ci"]) else f" [{scale * (s['mean'] - s['ci']):+.1f}, {scale * (s['mean'] + s['ci']):+.1f}]"
    return f"{scale * s['mean']:+.1f}{ci}"


def tables(rows: Sequence[dict[str, Any]], last_k: int) -> tuple[list[list[str]], list[list[str]]]:
    """(per-cell rows, paired-difference rows) in accuracy points."""
    cells = []
    for selection in SELECTIONS:
        for method in METHODS:
            group = [r for r in rows if r["method"] == method and r["selection"] == selection]
            if group:
                cells.append([method, selection, str(len(group)),
                              *(_pm(mean_sd_ci([r[k] for r in group])) for k in ("final", "best", "last_k"))])
    comparisons = [(m, "B2") for m in METHODS if m.startswith("Ours")] + [(m, "B1") for m in METHODS if m != "B1"]
    comparisons += [("Ours+eos+bos", "Ours"), ("Ours+eos+bos+uploaded", "Ours"),
                    ("Ours+eos+bos+uploaded", "Ours+eos+bos"), ("Ours+pre", "Ours"),
                    ("Ours+pre+removed", "Ours+pre"), ("B2+pre+removed", "Ours+pre+removed"),
                    ("Ours+eos+bos+pre+removed", "Ours+pre+removed")]
    diffs = []
    for selection in SELECTIONS:
        for a, b in comparisons:
            d = {k: paired(rows, a, b, k, selection) for k in ("final", "best", "last_k")}
            if d["final"]["n"]:
                diffs.append([f"{a} - {b}", selection, str(d["final"]["n"]),
                              *(_ci(d[k]) for k in ("final", "best", "last_k")), verdict(d["last_k"])])
    return cells, diffs


CELL_HEADER = ["method", "selection", "seeds", "final %", "best %", "last-k %"]
DIFF_HEADER = ["difference", "selection", "pairs", "final (95% CI)", "best (95% CI)", "last-k (95% CI)", "last-k verdict"]


def cmd_report(args: argparse.Namespace) -> int:
    rows = collect(args.output_dir / args.task, args.last_k)
    if not rows:
        print(f"no complete ablation results in {args.output_dir / args.task}", file=sys.stderr)
        return 1
    cells, diffs = tables(rows, args.last_k)
    print(f"== {args.task}: accuracy, mean ± sd over seeds (last-k: mean of the last {args.last_k} evaluations) ==")
    print(format_table(cells, header=CELL_HEADER))
    print("\n== paired differences (same seed, within each selection rule), accuracy points ==")
    print(format_table(diffs, header=DIFF_HEADER))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("protocol", "run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--task", choices=sorted(TASKS), default="20news")
        p.add_argument("--output-dir", type=Path, default=REPO / "results" / "ablation")
        p.add_argument("--jobs", type=int, default=1)
        p.add_argument("--rounds", type=int, default=24)
        p.add_argument("--last-k", type=int, default=5)
        p.add_argument("--overrides", nargs="*", default=[], help="extra config overrides for every run (last wins)")
    protocol = sub.choices["protocol"]
    protocol.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3])
    protocol.add_argument("--clients-per-round", type=int, nargs="+", default=[2, 4, 8])
    protocol.add_argument("--tolerance", type=float, default=0.02, help="final may be this far below the best")
    protocol.add_argument("--min-gain", type=float, default=0.05, help="the best must exceed round 1 by this much")
    run = sub.choices["run"]
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--clients-per-round", type=int, default=4)
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    run.add_argument("--selections", nargs="+", default=list(SELECTIONS), choices=list(SELECTIONS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"protocol": cmd_protocol, "run": cmd_run, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
