"""Reading result files into tables and plots: the `python -m fedmpi.analyze` CLI and its notebook API.

Owns everything downstream of the HDF5 file written on rank 0 (layout: fedmpi.results_schema).
It must import and run without torch and mpi4py, on a laptop, and on files of killed runs.
Per-client group data of a loaded run (kept groups, head importance) is read by fedmpi.importance_readers.

    python -m fedmpi.analyze results/RUN.h5 [more.h5 ...] [--target 0.7] [--plot out.png] [--no-plot]
    python -m fedmpi.analyze fig3|fig4|fig5|table5 FILES [--out out.png]   # the paper's figures (fedmpi.figures)
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import yaml

from fedmpi import results_schema as rs

MIB = 2**20
EXIT_BAD_FILE = 2


class ResultFileError(ValueError):
    """A path that is missing, not HDF5, or not a fedmpi result file; the message names the path."""


@dataclass
class Run:
    """One result file in memory. `rounds`/`clients` hold one numpy array per dataset of that group."""

    path: Path
    attrs: dict[str, Any]
    config: dict[str, Any]
    rounds: dict[str, np.ndarray]
    clients: dict[str, np.ndarray]
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # /groups: the families of parameter groups
    devices: dict[str, np.ndarray] = field(default_factory=dict)  # /devices: the device classes ({} if none or older file)
    final_trainable: np.ndarray | None = None

    @property
    def name(self) -> str:
        return str(self.attrs.get(rs.ATTR_RUN_NAME) or self.path.stem)

    @property
    def complete(self) -> bool:
        return self.attrs.get(rs.ATTR_STATUS) == rs.STATUS_COMPLETE

    @property
    def last_round(self) -> int | None:
        return int(self.rounds["round"][-1]) if len(self.rounds["round"]) else None


def _plain(value: Any) -> Any:
    """HDF5 attribute -> plain Python value (numpy scalars and bytes are awkward in dicts and tables)."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def _read_group(f: h5py.File, name: str, required: dict[str, str]) -> dict[str, np.ndarray] | None:
    """One group's datasets as arrays (strings decoded), or None if the file has no such group."""
    if name not in f:
        return None
    if missing := sorted(set(required) - set(f[name]) - rs.OPTIONAL_COLUMNS):
        raise ResultFileError(f"{f.filename}:/{name}: missing datasets {missing}")
    arrays = {
        key: ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
        for key, ds in f[name].items()
        if isinstance(ds, h5py.Dataset)
    }
    # A run killed between two dataset resizes can leave one column a row longer: keep whole rows.
    num_rows = min((len(a) for a in arrays.values()), default=0)
    return {key: a[:num_rows] for key, a in arrays.items()}


def result_files(folder: str | Path) -> list[Path]:
    """The result files in ``folder``, sorted: every ``*.h5`` but the runs' checkpoints (``*.ckpt.h5``)."""
    return sorted(p for p in Path(folder).glob("*.h5") if not p.name.endswith(rs.CHECKPOINT_SUFFIX))


def load_run(path: str | Path) -> Run:
    """Read a result file (complete or not). Raises ResultFileError, naming the path, on anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise ResultFileError(f"{path}: not an HDF5 file")
    try:
        return _read_run(path)
    except (OSError, yaml.YAMLError) as e:  # h5py's errors on damaged files do not always name the file
        raise ResultFileError(f"{path}: cannot read: {e}") from e


def _read_run(path: Path) -> Run:
    # locking=False: a run that is still going (or was killed) holds the file open for writing.
    with h5py.File(path, "r", locking=False) as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        if (version := attrs.get(rs.ATTR_FORMAT_VERSION)) != rs.FORMAT_VERSION:
            raise ResultFileError(f"{path}: format_version {version!r}, expected {rs.FORMAT_VERSION} (a fedmpi result?)")
        rounds = _read_group(f, rs.GROUP_ROUNDS, rs.ROUND_COLUMNS)
        if rounds is None:
            raise ResultFileError(f"{path}: no /{rs.GROUP_ROUNDS} group")
        no_clients = {key: np.empty(0, dtype) for key, dtype in rs.CLIENT_COLUMNS.items()}
        clients = _read_group(f, rs.GROUP_CLIENTS, rs.CLIENT_COLUMNS) or no_clients
        groups = _read_group(f, rs.GROUP_GROUPS, rs.GROUP_COLUMNS) or {}
        devices = _read_group(f, rs.GROUP_DEVICES, rs.DEVICE_COLUMNS) or {}  # absent in files from before it
        final = f[rs.FINAL_TRAINABLE][()] if rs.FINAL_TRAINABLE in f else None
    # Client rows are appended before their round's row: drop those of a round the run did not finish.
    finished = clients["round"] <= (rounds["round"][-1] if len(rounds["round"]) else -1)
    clients = {key: a[finished] for key, a in clients.items()}
    config = yaml.safe_load(attrs.get(rs.ATTR_CONFIG_YAML) or "") or {}
    devices = devices if len(devices.get("name", ())) else {}
    return Run(path, attrs, config, rounds, clients, groups, devices, final)


# Where the resolved config (fedmpi.config) keeps the names shown in the tables; the first path found wins.
CONFIG_NAME_PATHS: dict[str, tuple[str, ...]] = {
    "model": ("model.name", "model"),
    "strategy": ("strategy.name", "strategy"),
    "selection": ("server.selection", "selection.name", "selection"),
}


def _config_name(config: dict[str, Any], key: str) -> str:
    for dotted in CONFIG_NAME_PATHS[key]:
        value: Any = config
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and not isinstance(value, dict):
            return str(value)
    return "-"


def rounds_to_target(rounds: np.ndarray, metric: np.ndarray, target: float) -> int | None:
    """The first round whose (evaluated, non-NaN) metric reaches `target`; None if none does."""
    reached = np.flatnonzero(np.nan_to_num(np.asarray(metric, float), nan=-np.inf) >= target)
    return int(np.asarray(rounds)[reached[0]]) if len(reached) else None


def summarize(run: Run, target: float = 0.7) -> dict[str, Any]:
    """The per-run numbers of the table. Metrics are NaN (rounds None) when nothing was evaluated.

    Mean seconds per round is over training rounds (round >= 1); total seconds includes round 0's evaluation.
    """
    r = run.rounds
    metric = r["eval_metric"].astype(float)
    evaluated = ~np.isnan(metric)
    best_at = int(np.nanargmax(metric)) if evaluated.any() else None
    training = r["round"] >= 1
    skipped = run.clients.get("skipped_modules")
    skipped = skipped[skipped >= 0] if skipped is not None else np.empty(0)
    return {
        "run": run.name,
        "path": str(run.path),
        "model": _config_name(run.config, "model"),
        "strategy": _config_name(run.config, "strategy"),
        "selection": _config_name(run.config, "selection"),
        "num_ranks": run.attrs.get(rs.ATTR_NUM_RANKS),
        "metric": run.attrs.get(rs.ATTR_METRIC, "metric"),
        "evaluation": run.attrs.get(rs.ATTR_EVALUATION, rs.EVALUATION_GLOBAL),
        "final_metric": float(metric[evaluated][-1]) if evaluated.any() else math.nan,
        "best_metric": float(metric[best_at]) if best_at is not None else math.nan,
        "best_round": int(r["round"][best_at]) if best_at is not None else None,
        "target": target,
        "rounds_to_target": rounds_to_target(r["round"], metric, target),
        "upload_mib_paper": float(r["upload_bytes_paper"].sum()) / MIB,
        "mpi_bytes": int(r["mpi_bytes"].sum()),
        "mean_round_seconds": float(r["seconds"][training].mean()) if training.any() else math.nan,
        "total_seconds": float(r["seconds"].sum()),
        "last_round": run.last_round,
        "status": "complete" if run.complete else "incomplete",
        "writer_status": run.attrs.get(rs.ATTR_STATUS, "?"),
        "error": run.attrs.get(rs.ATTR_ERROR),
        # FedARA: mean adapter modules switched off per client-round (None where no strategy switches any off)
        "mean_skipped_modules": float(skipped.mean()) if skipped.size else None,
        "devices": device_summary(run),
    }


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if values.size and not np.isnan(values).all() else math.nan


def device_summary(run: Run) -> list[dict[str, Any]]:
    """One row per device class (/devices): its budgets (NaN: unlimited) and what its client-rounds
    planned, used and uploaded (means; NaN where a column is missing or nothing was recorded)."""
    d, c = run.devices, run.clients
    if not d:
        return []
    cls = c.get("device_class", np.full(len(c["round"]), -1))
    rows = []
    for k, name in enumerate(d["name"]):
        mine = cls == k

        def mean(column: str) -> float:
            return _mean(c[column][mine]) if column in c else math.nan

        rows.append({
            "name": str(name), "share": float(d["share"][k]), "num_clients": int(d["num_clients"][k]),
            "memory_bytes": float(d["memory_bytes"][k]), "flops_per_round": float(d["flops_per_round"][k]),
            "upload_bytes_per_round": float(d["upload_bytes_per_round"][k]), "speed": float(d["speed"][k]),
            "client_rounds": int(mine.sum()), "planned_memory_bytes": mean("planned_memory_bytes"),
            "peak_memory_bytes": mean("peak_memory_bytes"), "upload_bytes_paper": mean("upload_bytes_paper"),
            "seconds": mean("seconds"),
        })  # fmt: skip
    return rows


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """Plain-text table, columns left-aligned and padded to their widest cell."""
    widths = [max(len(str(c)) for c in col) for col in zip(*([header] if header else []), *rows)]
    lines = [*([list(header), ["-" * w for w in widths]] if header else []), *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def format_run(s: dict[str, Any]) -> str:
    """The table of one run, from summarize()."""
    status = s["status"]
    if status != "complete":
        status += f" (writer status {s['writer_status']!r}, stopped after round {_fmt(s['last_round'])})"
        status += f": {s['error']}" if s["error"] else ""
    rows = [
        ("run", s["run"]),
        ("file", s["path"]),
        ("model", s["model"]),
        ("strategy", s["strategy"]),
        ("selection", s["selection"]),
        ("num ranks", _fmt(s["num_ranks"])),
        (f"final {s['metric']}", _fmt(s["final_metric"])),
        (f"best {s['metric']}", f"{_fmt(s['best_metric'])} (round {_fmt(s['best_round'])})"),
        (f"rounds to {s['metric']} >= {s['target']:g}", _fmt(s["rounds_to_target"])),
        ("upload MiB (paper)", _fmt(s["upload_mib_paper"], 2)),
        ("MPI bytes moved", f"{_fmt(s['mpi_bytes'])} ({s['mpi_bytes'] / MIB:.2f} MiB)"),
        ("mean s / round", _fmt(s["mean_round_seconds"], 2)),
        ("total s", _fmt(s["total_seconds"], 1)),
        ("status", status),
    ]
    if s.get("mean_skipped_modules") is not None:
        rows.insert(-1, ("modules skipped / client-round", _fmt(s["mean_skipped_modules"], 2)))
    text = format_table(rows)
    if s.get("devices"):
        text += "\ndevices (budgets per round; means over each class's client-rounds):\n" + format_devices(s["devices"])
    return text


def _budget(value: float, scale: float) -> str:
    return "unlimited" if math.isnan(value) else f"{value / scale:.2f}"


def format_devices(rows: Sequence[dict[str, Any]]) -> str:
    """The /devices table from device_summary(): budgets, then what the class's client-rounds used."""
    header = ["class", "share", "clients", "memory MB", "GFLOPs", "upload MB", "speed", "client-rounds",
              "planned MB", "peak MB", "sent MB", "s"]  # fmt: skip
    body = [
        [r["name"], f"{r['share']:g}", str(r["num_clients"]), _budget(r["memory_bytes"], 1e6),
         _budget(r["flops_per_round"], 1e9), _budget(r["upload_bytes_per_round"], 1e6), f"{r['speed']:g}",
         str(r["client_rounds"]), _fmt(r["planned_memory_bytes"] / 1e6, 2), _fmt(r["peak_memory_bytes"] / 1e6, 1),
         _fmt(r["upload_bytes_paper"] / 1e6, 3), _fmt(r["seconds"], 2)]
        for r in rows
    ]  # fmt: skip
    return format_table(body, header=header)


COMPARISON_COLUMNS = (
    ("run", "run", None), ("model", "model", None), ("strategy", "strategy", None),
    ("selection", "selection", None), ("ranks", "num_ranks", None), ("final", "final_metric", 4),
    ("best", "best_metric", 4), ("best@", "best_round", None), ("to target", "rounds_to_target", None),
    ("upload MiB", "upload_mib_paper", 2), ("MPI bytes", "mpi_bytes", None),
    ("s/round", "mean_round_seconds", 2), ("total s", "total_seconds", 1), ("status", "status", None),
)  # fmt: skip


def format_comparison(summaries: Sequence[dict[str, Any]]) -> str:
    """One row per run, from summarize()."""
    rows = [[_fmt(s[key], d) if d else _fmt(s[key]) for _, key, d in COMPARISON_COLUMNS] for s in summaries]
    return format_table(rows, header=[title for title, _, _ in COMPARISON_COLUMNS])


def plot_runs(runs: Sequence[Run], path: str | Path) -> Path:
    """Write a PNG: eval metric per round (left), train (solid) and eval (dashed) loss per round (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, without touching pyplot's global backend
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_metric, ax_loss = fig.subplots(1, 2)
    for i, run in enumerate(runs):
        color, r = f"C{i % 10}", run.rounds
        label = run.name if run.complete else f"{run.name} (incomplete)"
        for ax, key, style, lbl in (
            (ax_metric, "eval_metric", "o-", label),
            (ax_loss, "train_loss", "-", f"{label} train"),
            (ax_loss, "eval_loss", "--", f"{label} eval"),
        ):
            ok = ~np.isnan(r[key].astype(float))
            ax.plot(r["round"][ok], r[key][ok], style, color=color, label=lbl, markersize=3)
    metrics = sorted({str(run.attrs.get(rs.ATTR_METRIC, "metric")) for run in runs})
    ax_metric.set(xlabel="round", ylabel="eval " + " / ".join(metrics), title="global model")
    ax_loss.set(xlabel="round", ylabel="loss", title="loss")
    for ax in (ax_metric, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from fedmpi import figures  # it builds on this module

    if argv and argv[0] in figures.FIGURES:
        try:
            return figures.main(argv[0], argv[1:])
        except (ResultFileError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_FILE
    parser = argparse.ArgumentParser(prog="python -m fedmpi.analyze", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="result files (.h5)")
    parser.add_argument("--target", type=float, default=0.7, help="metric target for 'rounds to target'")
    parser.add_argument("--plot", type=Path, help="PNG path (default: <first file's stem>.png next to it)")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(p) for p in args.files]
    except ResultFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_FILE
    summaries = [summarize(run, args.target) for run in runs]
    for s in summaries:
        print(f"== {s['run']} ==\n{format_run(s)}\n")
    if len(runs) > 1:
        print(f"== comparison (target {args.target:g}) ==\n{format_comparison(summaries)}\n")
    if not args.no_plot:
        out = plot_runs(runs, args.plot or args.files[0].with_suffix(".png"))
        print(f"plot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
