"""The paper's method beside the two related systems, at CPU scale on real data.

Methods: FedAvg-LoRA (B1), the paper's method (importance head pruning + Eq. 8), layer
finetuning (arXiv 2411.07826) under a homogeneous and two heterogeneous device profiles,
and FedARA (arXiv 2501.14406). Tasks: 20 Newsgroups and SICK from ``../shared/data``, each
IID and Dirichlet(0.5) and Dirichlet(0.1), over several seeds. Every (task, partition,
method, seed) is one ``python -m fedmpi.launch`` run writing <output-dir>/<name>.h5 and a
.log; a complete result is skipped, so an interrupted sweep resumes. Then it prints, per
(task, partition), final and best accuracy and the mean of the last 5 evaluations (mean ± sd
over seeds), upload per client-round, measured seconds and peak memory per client-round, each
method's differences from FedAvg-LoRA paired by seed, and writes one PNG per (task, partition):
the mean accuracy curve of each method.

    python experiments/related_systems.py --seeds 0 1 2 [--jobs 2] [--tasks 20newsgroups sick]
        [--partitions iid dir0.5 dir0.1] [--methods ...] [--overrides server.num_rounds=8]
    python experiments/related_systems.py --seeds 0 1 --table-only
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import (  # noqa: E402
    REPO, Job, curve_numbers, is_complete, mean_curve, mean_std, paired, paired_cell, pm, run_sweep,
)

from fedmpi.analyze import format_table, load_run  # noqa: E402

MIB = 2.0**20
# With 2 clients per round on a skewed partition the last evaluation swings with the last round's
# clients; the mean of the last LAST_K evaluations is the steadier figure.
LAST_K = 5
# A CPU-scale federation (as configs/cpu/table1_*.yaml): MiniLM, 16 clients, 2 per round, 16 rounds.
COMMON = [
    "model.name=minilm", "data.max_length=64", "data.num_clients=16", "server.num_clients_per_round=2",
    "server.num_rounds=16", "client.batch_size=16", "client.lr=5e-3", "server.eval_every=1",
    "peft.lora.rank=16", "peft.lora.target_modules=[query,key,value]",
]  # fmt: skip
TASKS = {
    "20newsgroups": ["data.source=20newsgroups", "data.path=../shared/data/20newsgroups",
                     "data.max_train_samples=1920", "data.max_eval_samples=400"],
    # At 5e-3 SICK's dense runs sit on the majority class (ablation.py protocol, README); 2e-3 learns.
    # A method's own lr (layer finetuning's 1e-4) still wins: METHODS come after TASKS.
    "sick": ["data.source=sick", "data.path=../shared/data/sick", "data.max_train_samples=1920",
             "data.max_eval_samples=400", "client.lr=2e-3"],
}  # fmt: skip
PARTITIONS = {
    "iid": ["data.partition=iid"],
    "dir0.5": ["data.partition=dirichlet", "data.dirichlet_alpha=0.5"],
    "dir0.1": ["data.partition=dirichlet", "data.dirichlet_alpha=0.1"],
}


def _devices(*classes: str) -> str:
    return "devices.classes=[" + ", ".join(classes) + "]"


# Device budgets for MiniLM at batch 16 x 64 tokens, fp32 (fedmpi.budgets): training the last n of
# 6 blocks needs 87 + 50.3 n MiB and uploads 6.8 n MiB. So 200 MiB trains 2 blocks, 100 MiB only the
# head, and 8 MiB of upload 1 block. A FLOPs budget grows with the client's data: a round costs
# (1.43 + 0.25 n) GFLOP per sample, so a budget that binds at 120 samples (0.35 TFLOP: 5 blocks)
# cannot train even the head of a client above 244 samples, and Dirichlet partitions make such
# clients (SICK at alpha 0.1 up to 1388; README). 2.0 TFLOP fits the largest client of every cell
# here, so it binds only on data-rich clients (all 6 blocks up to 683 samples, the head alone at 1388).
# Layer finetuning trains whole blocks' dense weights: at the adapters' lr 5e-3 it stays at chance
# (measured, README), so it runs at a full fine-tuning lr.
LAYER_FT = ["strategy.name=layer_finetuning", "client.lr=1e-4"]
METHODS: dict[str, list[str]] = {
    "fedavg_lora": ["strategy.name=fedavg"],
    "ours": ["strategy.name=head_pruning", "strategy.pruning=importance", "strategy.weighting=importance"],
    "layer_homogeneous": [*LAYER_FT, _devices("{name: mid, memory_bytes: 2.0e8}")],
    "layer_memory_tiers": [*LAYER_FT, _devices(
        "{name: low, memory_bytes: 1.0e8, share: 0.25}", "{name: mid, memory_bytes: 2.0e8, share: 0.5}",
        "{name: high, share: 0.25}")],
    "layer_upload_flops": [*LAYER_FT, _devices(
        "{name: thin_link, upload_bytes_per_round: 8.0e6, share: 0.5}",
        "{name: slow_cpu, flops_per_round: 2.0e12, share: 0.5}")],
    "fedara": ["strategy.name=fedara"],
}  # fmt: skip
LABELS = {
    "fedavg_lora": "FedAvg-LoRA", "ours": "Ours (head pruning)", "layer_homogeneous": "Layer FT (homogeneous)",
    "layer_memory_tiers": "Layer FT (memory tiers)", "layer_upload_flops": "Layer FT (upload/FLOPs)",
    "fedara": "FedARA",
}  # fmt: skip


def make_job(task: str, partition: str, method: str, seed: int) -> Job:
    overrides = (*COMMON, *TASKS[task], *PARTITIONS[partition], *METHODS[method], f"seed={seed}")
    labels = {"task": task, "partition": partition, "method": method, "seed": seed}
    return Job(f"related_{task}_{partition}_{method}-s{seed}", None, overrides, labels)


def run_summary(path: Path) -> dict:
    run = load_run(path)
    c = run.clients
    peak = c.get("peak_memory_bytes")
    metric = run.rounds["eval_metric"].astype(float)
    return {
        **curve_numbers(metric, LAST_K),  # final, best, last_k
        "upload_mib": float(np.mean(c["upload_bytes_paper"])) / MIB if len(c["round"]) else math.nan,
        "seconds": float(np.median(c["seconds"])) if len(c["round"]) else math.nan,
        "peak_mib": float(np.median(peak)) / MIB if peak is not None and len(peak) else math.nan,
        "curve": (run.rounds["round"], metric),
    }  # fmt: skip


def _pm(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    mean, sd, _ = mean_std(values)
    return pm(mean, sd, scale, digits)


def plot_comparison(curves: dict[str, list], title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (method, runs) in enumerate(curves.items()):
        rounds, mean = mean_curve(runs)
        ax.plot(rounds, mean, "o-", color=f"C{i}", markersize=3, label=f"{LABELS[method]} (n={len(runs)})")
    ax.set(xlabel="round", ylabel="eval accuracy (mean over seeds)", title=title)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def report(jobs: list[Job], output_dir: Path) -> None:
    groups: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for job in jobs:
        path = output_dir / f"{job.name}.h5"
        if not is_complete(path):
            continue
        summary = {**run_summary(path), "seed": job.labels["seed"]}
        groups.setdefault((job.labels["task"], job.labels["partition"]), {}).setdefault(job.labels["method"], []).append(summary)
    for (task, partition), by_method in groups.items():
        rows = [
            [LABELS[m], str(len(s)), _pm([x["final"] for x in s], 100), _pm([x["best"] for x in s], 100),
             _pm([x["last_k"] for x in s], 100), _pm([x["upload_mib"] for x in s], digits=3),
             _pm([x["seconds"] for x in s], digits=2), _pm([x["peak_mib"] for x in s], digits=0)]
            for m, s in by_method.items()
        ]  # fmt: skip
        print(f"\n{task}, {partition}")
        header = ["method", "seeds", "final acc %", "best acc %", f"last-{LAST_K} acc %", "upload MiB/client-round", "s/client-round", "peak MiB/client-round"]
        print(format_table(rows, header))
        if "fedavg_lora" in by_method:  # each method against FedAvg-LoRA, paired by seed
            for key, name in (("final", "final"), ("last_k", f"last-{LAST_K}")):
                base = {x["seed"]: x[key] for x in by_method["fedavg_lora"]}
                for m, s in by_method.items():
                    if m != "fedavg_lora":
                        diff = paired({x["seed"]: x[key] for x in s}, base)
                        print(f"  {LABELS[m]} - FedAvg-LoRA, {name} acc points: {paired_cell(diff, 100, 1)}")
        png = output_dir / f"related_{task}_{partition}.png"
        plot_comparison({m: [x["curve"] for x in s] for m, s in by_method.items()}, f"{task}, {partition}", png)
        print(f"figure: {png}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--output-dir", type=Path, default=REPO / "results" / "cpu" / "related")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (threads are shared out)")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra key=value for every run (they win)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    args.output_dir = args.output_dir.resolve()
    jobs = [make_job(t, p, m, s) for s in args.seeds for t in args.tasks for p in args.partitions for m in args.methods]
    failed = 0 if args.table_only else run_sweep(jobs, args.output_dir, parallel=args.jobs, overrides=args.overrides)
    report(jobs, args.output_dir)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
