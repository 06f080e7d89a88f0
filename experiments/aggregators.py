"""The aggregator comparison: every federated-LoRA strategy, head pruning where it applies, and server optimizers.

All variants share configs/cpu/aggregators.yaml (MiniLM, 20 Newsgroups, Dirichlet 0.5) and differ
by a few overrides (VARIANTS). Each (variant, seed) is one ``python -m fedmpi.launch`` run writing
<output-dir>/<variant>-s<seed>.h5 and a .log; a complete result is never rerun, so an interrupted
sweep resumes. A variant whose config this fedmpi does not accept (a strategy not built in) is
skipped with the reason. The table (table.md, runs.csv) and the accuracy curves (curves.png) are
read from the result files with fedmpi.analyze (no torch, no MPI).

    python experiments/aggregators.py --seeds 0 1 2 [--jobs 2] [--overrides server.num_rounds=8]
    python experiments/aggregators.py --seeds 0 1 2 --table-only
    python experiments/aggregators.py --seeds 0 --variants fedavg fedit --overrides model.name=tiny-bert   # smoke
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import REPO, Job, is_complete, mean_curve, paired, paired_cell, run_sweep  # noqa: E402

from fedmpi.analyze import format_table, load_run, summarize  # noqa: E402
from fedmpi.config import ConfigError, load_config  # noqa: E402

CONFIG = REPO / "configs" / "cpu" / "aggregators.yaml"
HETERO_RANKS = ["strategy.ranks=[2,4,8]", "strategy.shares=[0.4,0.3,0.3]"]  # lora.rank 8 = the largest class
# name -> (label, overrides). Head pruning applies where heads own B rows that a client can drop:
# FedAvg/FedIT (strategy head_pruning: B2 and the paper's method; FedIT + strategy.head_pruning is the
# same rule, so it is not run twice) and, through the strategy.head_pruning sub-section, FFA-LoRA,
# RoLoRA, FLoRA and FedEx-LoRA. HetLoRA, FlexLoRA and FedSA-LoRA refuse it (the config error says why).
PRUNED = ["strategy.head_pruning.sparsity=0.5", "strategy.head_pruning.pruning=importance",
          "strategy.head_pruning.weighting=importance"]  # fmt: skip
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "fedavg": ("FedAvg (all trainable)", ["strategy.name=fedavg"]),
    "fedavg_pruned": ("FedAvg + importance head pruning (paper)", [
        "strategy.name=head_pruning", "strategy.sparsity=0.5", "strategy.pruning=importance", "strategy.weighting=importance"]),
    "fedavg_random_pruned": ("FedAvg + random head pruning (B2)", [
        "strategy.name=head_pruning", "strategy.sparsity=0.5", "strategy.pruning=random", "strategy.weighting=samples"]),
    "fedit": ("FedIT", ["strategy.name=fedit"]),
    "fedit_uniform": ("FedIT, uniform mean", ["strategy.name=fedit", "strategy.weighting=uniform"]),
    "ffa_lora": ("FFA-LoRA", ["strategy.name=ffa_lora"]),
    "ffa_lora_pruned": ("FFA-LoRA + importance head pruning", ["strategy.name=ffa_lora", *PRUNED]),
    "rolora": ("RoLoRA", ["strategy.name=rolora"]),
    "rolora_pruned": ("RoLoRA + importance head pruning", ["strategy.name=rolora", *PRUNED]),
    "flora": ("FLoRA", ["strategy.name=flora"]),
    "flora_pruned": ("FLoRA + importance head pruning", ["strategy.name=flora", *PRUNED]),
    "fedex_lora": ("FedEx-LoRA", ["strategy.name=fedex_lora"]),
    "fedex_lora_pruned": ("FedEx-LoRA + importance head pruning", ["strategy.name=fedex_lora", *PRUNED]),
    "hetlora": ("HetLoRA (ranks 2/4/8)", ["strategy.name=hetlora", *HETERO_RANKS]),
    "flexlora": ("FlexLoRA (ranks 2/4/8)", ["strategy.name=flexlora", *HETERO_RANKS]),
    # Each client's own model (global A, its B and head), scored on its own label mix (FedSA-LoRA's default)
    # or on the balanced eval set as it is; and FedAvg's global model scored like the first, on the label
    # mix of each of the round's clients: the like-for-like baseline of a personal evaluation.
    "fedsa_lora": ("FedSA-LoRA (personal evaluation)", ["strategy.name=fedsa_lora"]),
    "fedsa_lora_global": ("FedSA-LoRA (global evaluation)", ["strategy.name=fedsa_lora", "server.evaluation=global"]),
    "fedavg_personal": ("FedAvg (personal evaluation)", ["strategy.name=fedavg", "server.evaluation=personal"]),
    "fedavg_adam": ("FedAvg + FedAdam (server lr 0.01)", ["strategy.name=fedavg", "server.optimizer=adam", "server.lr=0.01"]),
    "fedavg_avgm": ("FedAvg + FedAvgM (momentum 0.7)", ["strategy.name=fedavg", "server.optimizer=avgm", "server.momentum=0.7"]),
    "fedprox": ("FedAvg + FedProx (mu 0.01)", ["strategy.name=fedavg", "client.prox_mu=0.01"]),
}
TARGET = 0.30  # accuracy for "rounds to target"


def variant_error(name: str, args: argparse.Namespace) -> str | None:
    """Why this fedmpi cannot run the variant (its config is rejected), or None."""
    try:
        load_config(CONFIG, [*VARIANTS[name][1], *args.overrides])
    except ConfigError as exc:
        return str(exc).replace("\n", " ")
    return None


def run_summary(name: str, path: Path) -> dict[str, Any]:
    run = load_run(path)
    s = summarize(run, TARGET)
    training = run.rounds["round"] >= 1
    participations = max(int(run.rounds["num_selected"][training].sum()), 1)
    download = run.rounds.get("download_bytes_paper")
    return {
        "variant": name,
        "seed": int(run.config.get("seed", -1)),
        "final": s["final_metric"],
        "best": s["best_metric"],
        "rounds_to_target": math.nan if s["rounds_to_target"] is None else float(s["rounds_to_target"]),
        "upload_mib": float(run.rounds["upload_bytes_paper"][training].sum()) / participations / 2**20,
        "download_mib": math.nan if download is None else float(download[training].sum()) / participations / 2**20,
        "curve": (run.rounds["round"], run.rounds["eval_metric"].astype(float)),
    }


def mean_sd(values: Sequence[float]) -> str:
    v = np.array([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return "-"
    return f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if v.size > 1 else "")


HEADER = ["variant", "seeds", "final acc", "best acc", f"rounds to {TARGET:.0%}", "upload MiB/client/round",
          "download MiB/client/round", "Δ final vs FedAvg (pts) [95% CI]"]  # fmt: skip
BASELINE = "fedavg"  # every variant's final accuracy is paired by seed with this one's


def table_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    base = {s["seed"]: s["final"] for s in summaries if s["variant"] == BASELINE}
    rows = []
    for name, (label, _) in VARIANTS.items():
        runs = [s for s in summaries if s["variant"] == name]
        if runs:
            diff = "-" if name == BASELINE or not base else paired_cell(paired({r["seed"]: r["final"] for r in runs}, base), 100, 1)
            rows.append([label, str(len(runs)), *(mean_sd([r[k] for r in runs]) for k in
                         ("final", "best", "rounds_to_target", "upload_mib", "download_mib")), diff])  # fmt: skip
    return rows


def plot_curves(summaries: list[dict[str, Any]], path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # One colour per aggregator (tab20's dark shades first, then its light ones); its head-pruned
    # variant has the same colour, dashed.
    shown = [name for name in VARIANTS if any(s["variant"] == name for s in summaries)]
    bases = list(dict.fromkeys(name.removesuffix("_pruned") for name in shown))
    palette = colormaps["tab20"]
    for name in shown:
        label = VARIANTS[name][0]
        rounds, mean = mean_curve([s["curve"] for s in summaries if s["variant"] == name])
        pruned = name.endswith("_pruned")
        i = bases.index(name.removesuffix("_pruned"))
        color = palette((2 * i) % 20 + (2 * i) // 20)
        ax.plot(rounds, mean, marker="o", markersize=3, label=label, color=color, linestyle="--" if pruned else "-")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (mean over seeds)")
    ax.set_title("Aggregators on 20 Newsgroups, Dirichlet 0.5 (MiniLM, LoRA r=8)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python experiments/aggregators.py", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    p.add_argument("--overrides", nargs="*", default=[], metavar="key.sub=value", help="passed to every run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores/jobs threads)")
    p.add_argument("--output-dir", type=Path, default=REPO / "results" / "cpu" / "aggregators")
    p.add_argument("--table-only", action="store_true", help="run nothing; tabulate the result files there")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.output_dir = args.output_dir.resolve()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    runnable = []
    for name in args.variants:
        error = variant_error(name, args)
        if error:
            print(f"{name}: skipped, this fedmpi rejects its config: {error}", flush=True)
        else:
            runnable.append(name)
    jobs = [Job(f"{name}-s{seed}", CONFIG, (*VARIANTS[name][1], f"seed={seed}"), {"variant": name})
            for seed in args.seeds for name in runnable]
    failed = 0 if args.table_only else run_sweep(jobs, args.output_dir, parallel=args.jobs, overrides=args.overrides)
    summaries = [run_summary(job.labels["variant"], path) for job in jobs
                 if is_complete(path := args.output_dir / f"{job.name}.h5")]
    if not summaries:
        print(f"no complete result files in {args.output_dir}")
        return 1
    rows = table_rows(summaries)
    (args.output_dir / "table.md").write_text(
        f"# Aggregators (mean ± sd over seeds {args.seeds})\n\n| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER)
        + "\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"
    )  # fmt: skip
    with (args.output_dir / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in summaries[0] if k != "curve"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summaries)
    plot_curves(summaries, args.output_dir / "curves.png")
    print(format_table(rows, HEADER))
    print(f"\nwritten: {args.output_dir}/table.md, runs.csv, curves.png")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
