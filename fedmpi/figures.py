"""The paper's figures and Table 5 from result files: ``python -m fedmpi.analyze fig3|fig4|fig5|table5 FILES``.

Each command prints the numbers behind its figure and writes a PNG (``--out``). Like
``fedmpi.analyze`` it needs neither torch nor MPI. Runs are labelled by their resolved
config (B1 / B2 / Ours, selection, importance options), so files from several seeds of one
cell are averaged together.

- ``fig3``: accuracy over rounds, one curve per Table 1 cell (mean over seeds, min-max band);
- ``fig4``: a sparsity sweep: final accuracy, upload per client-round, analytic OPs and
  measured seconds per client-round, against sparsity;
- ``fig5``: per run, the importance of the selected clients over rounds (rows: client-rounds,
  columns: heads, one per attention module and head (``importance_readers.head_columns``); every
  head's measured score, the kept ones dotted), and the Euclidean distance between the clients of
  each round over those scores;
- ``table5``: final and best accuracy per Dirichlet alpha (and IID) and method.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedmpi import results_schema as rs
from fedmpi.analyze import MIB, Run, format_table, load_run
from fedmpi.importance_readers import has_measured_importance, importance_rows, kept_heads


def _get(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


# Non-default Eq. 6 / pruning options, shown in a label as key=value (defaults: README "Importance options").
OPTION_DEFAULTS = {"importance_exclude": "eos", "score_on": "training", "skip_first_queries": 0,
                   "pruned_heads": "frozen", "mask_timing": "post_train"}


def method_label(run: Run) -> str:
    """'B1', 'B2' or 'Ours' (+ non-default options), then the selection rule: the Table 1 cell."""
    strategy = _get(run.config, "strategy", {}) or {}
    if strategy.get("name") == "fedavg":
        method = "B1"
    elif strategy.get("pruning") == "random":
        method = "B2"
    else:
        method = "Ours"
        extras = [f"{k}={strategy[k]}" for k, d in OPTION_DEFAULTS.items() if k in strategy and strategy[k] != d]
        method += f" ({', '.join(extras)})" if extras else ""
    selection = _get(run.config, "server.selection", _get(run.config, "selection.name", "-"))
    return f"{method} / {selection}"


def sparsity_of(run: Run) -> float:
    """The configured head-pruning sparsity: ``strategy.sparsity`` (head_pruning) or, for the LoRA strategies,
    ``strategy.head_pruning.sparsity``; 0 where nothing is head-pruned."""
    if _get(run.config, "strategy.name") == "head_pruning":
        return float(_get(run.config, "strategy.sparsity", 0.0))
    return float(_get(run.config, "strategy.head_pruning.sparsity", 0.0) or 0.0)


def partition_label(run: Run) -> str:
    if _get(run.config, "data.partition") == "dirichlet":
        return f"dir({float(_get(run.config, 'data.dirichlet_alpha')):g})"
    return "iid"


def _evaluated(run: Run) -> tuple[np.ndarray, np.ndarray]:
    r = run.rounds
    metric = r["eval_metric"].astype(float)
    ok = ~np.isnan(metric)
    return r["round"][ok], metric[ok]


def _final(run: Run) -> float:
    _, metric = _evaluated(run)
    return float(metric[-1]) if metric.size else float("nan")


def _best(run: Run) -> float:
    _, metric = _evaluated(run)
    return float(metric.max()) if metric.size else float("nan")


def _figure(ncols: int, nrows: int = 1, size: tuple[float, float] = (4.2, 3.6)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, without touching pyplot's backend
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def fig3(runs: Sequence[Run], out: Path) -> str:
    """Accuracy over rounds per Table 1 cell: mean over the cell's runs, with the min-max band."""
    cells: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        cells[method_label(run)].append(run)
    fig, axes = _figure(1, size=(7, 4.5))
    ax = axes[0, 0]
    rows = []
    for i, (label, group) in enumerate(sorted(cells.items())):
        curves = [dict(zip(*_evaluated(r))) for r in group]
        common = sorted(set.intersection(*(set(c) for c in curves)))
        values = np.array([[c[k] for k in common] for c in curves])
        mean = values.mean(axis=0)
        ax.plot(common, mean, "o-", color=f"C{i % 10}", markersize=3, label=f"{label} (n={len(group)})")
        ax.fill_between(common, values.min(axis=0), values.max(axis=0), color=f"C{i % 10}", alpha=0.15)
        rows.append([label, str(len(group)), " ".join(f"{v:.3f}" for v in mean)])
    metric = runs[0].attrs.get(rs.ATTR_METRIC, "metric")
    ax.set(xlabel="round", ylabel=f"eval {metric}", title="Fig. 3: accuracy over rounds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, out)
    return format_table(rows, header=["cell", "runs", f"mean {metric} per evaluated round (from round 0)"])


def fig4(runs: Sequence[Run], out: Path) -> str:
    """Against sparsity: final metric, upload MiB, analytic GOPs and measured seconds per client-round."""
    by_sparsity: dict[float, list[Run]] = defaultdict(list)
    for run in runs:
        by_sparsity[sparsity_of(run)].append(run)
    columns: dict[str, Callable[[Run], float]] = {
        "final metric": _final,
        "upload MiB / client-round": lambda r: float(np.mean(r.clients["upload_bytes_paper"])) / MIB,
        "analytic GOPs / client-round": lambda r: float(np.mean(r.clients["ops"])) / 1e9,
        "measured s / client-round": lambda r: float(np.mean(r.clients["seconds"])),
    }
    sparsities = sorted(by_sparsity)
    table = {name: [float(np.mean([f(r) for r in by_sparsity[s]])) for s in sparsities] for name, f in columns.items()}
    fig, axes = _figure(len(columns))
    for ax, (name, values) in zip(axes[0], table.items()):
        ax.plot([100 * s for s in sparsities], values, "o-")
        ax.set(xlabel="sparsity %", title=name)
        ax.grid(alpha=0.3)
    fig.suptitle("Fig. 4: sparsity sweep")
    _save(fig, out)
    rows = [[f"{100 * s:g}%", str(len(by_sparsity[s])), *(f"{table[n][i]:.4g}" for n in columns)]
            for i, s in enumerate(sparsities)]
    return format_table(rows, header=["sparsity", "runs", *columns])


def round_distances(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """Per round: the mean Euclidean distance between the importance vectors of its clients (Fig. 5),
    one coordinate per attention module and head, every head's score included (``importance_rows``)."""
    importance = importance_rows(run)
    rounds = np.unique(run.clients["round"])
    distances = []
    for r in rounds:
        m = importance[run.clients["round"] == r]
        pairs = [np.linalg.norm(m[i] - m[j]) for i in range(len(m)) for j in range(i + 1, len(m))]
        distances.append(float(np.mean(pairs)) if pairs else float("nan"))
    return rounds, np.array(distances)


def fig5(runs: Sequence[Run], out: Path) -> str:
    """Importance heatmaps of the selected clients over rounds (columns: one per attention module and
    head, ``importance_readers.head_columns``; every head's score; dots: the heads the client kept), and
    per-round client distances. Groups that are not heads (LoRA A groups, blocks, triplets) are left out."""
    fig, axes = _figure(len(runs) + 1, size=(4.6, 4.2))
    lines = []
    for i, run in enumerate(runs):
        rounds, distances = round_distances(run)
        importance = importance_rows(run)
        ax = axes[0, i]
        image = ax.imshow(importance, aspect="auto", interpolation="nearest", cmap="viridis")
        fig.colorbar(image, ax=ax, shrink=0.8)
        if rs.CLIENT_GROUP_MASK in run.clients and not (kept := kept_heads(run)).all():
            rows, heads = np.nonzero(kept)
            size = min(12.0, (250 / max(importance.shape)) ** 2)  # dots shrink with the cells
            ax.scatter(heads, rows, s=size, c="white", edgecolors="black", linewidths=0.4 * size / 12)
        ticks = np.flatnonzero(np.r_[True, np.diff(run.clients["round"]) != 0])
        ax.set_yticks(ticks, [f"r{run.clients['round'][t]}" for t in ticks], fontsize="x-small")
        ax.set(xlabel="head (attention modules in order)", title=f"{partition_label(run)}: {run.name}")
        label = f"{partition_label(run)} ({run.name})"
        if not has_measured_importance(run):  # a file from before measured_importance: pruned heads read 0
            label += " [uploaded scores only]"
        axes[0, -1].plot(rounds, distances, "o-", markersize=3, label=label)
        lines.append([label, f"{np.nanmean(distances):.4g}", " ".join(f"{d:.4g}" for d in distances)])
    ax = axes[0, -1]
    ax.set(xlabel="round", ylabel="Euclidean distance", title="distance between the round's clients")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.suptitle("Fig. 5: head importance of the selected clients (dots: the heads each client kept)")
    _save(fig, out)
    return format_table(lines, header=["run", "mean distance", "per round"])


def table5(runs: Sequence[Run], out: Path) -> str:
    """Final and best metric per data partition (IID, Dirichlet alphas) and method, mean over runs."""
    cells: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        cells[(method_label(run), partition_label(run))].append(run)
    methods = sorted({m for m, _ in cells})

    def order(p: str) -> float:
        return float("inf") if p == "iid" else float(p[4:-1])

    partitions = sorted({p for _, p in cells}, key=order)
    fig, axes = _figure(1, size=(7, 4.5))
    ax = axes[0, 0]
    rows = []
    for i, method in enumerate(methods):
        finals = [np.mean([_final(r) for r in cells[(method, p)]]) if (method, p) in cells else np.nan
                  for p in partitions]
        bests = [np.mean([_best(r) for r in cells[(method, p)]]) if (method, p) in cells else np.nan
                 for p in partitions]
        ax.plot(range(len(partitions)), finals, "o-", color=f"C{i % 10}", label=method)
        rows.append([method, *(f"{f:.4f} / {b:.4f}" for f, b in zip(finals, bests))])
    ax.set_xticks(range(len(partitions)), partitions)
    ax.set(xlabel="partition (Dirichlet alpha)", ylabel="final metric", title="Table 5: label skew")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, out)
    return format_table(rows, header=["method (final / best)", *partitions])


FIGURES: dict[str, Callable[[Sequence[Run], Path], str]] = {"fig3": fig3, "fig4": fig4, "fig5": fig5, "table5": table5}


def main(command: str, argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m fedmpi.analyze {command}", description=FIGURES[command].__doc__)
    parser.add_argument("files", nargs="+", type=Path, help="result files (.h5)")
    parser.add_argument("--out", type=Path, default=Path(f"{command}.png"), help="PNG path")
    args = parser.parse_args(argv)
    runs = [load_run(p) for p in args.files]
    print(FIGURES[command](runs, args.out))
    print(f"plot: {args.out}")
    return 0
