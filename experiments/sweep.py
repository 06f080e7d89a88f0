"""What every experiment script shares: running a list of fedmpi runs, and the statistics of their results.

A ``Job`` is one ``python -m fedmpi.launch`` run (a config file plus overrides) writing
<output-dir>/<name>.h5 and a .log beside it. ``run_sweep`` runs jobs a few at a time and skips
those whose complete result file exists, so an interrupted sweep resumes where it stopped.
It is the one runner of the experiment scripts (table1/3/4, ablation, aggregators, related
systems); ``add_sweep_options`` and ``run_and_collect`` are a table script's command line and run,
``report_ours_vs_b1`` the output of those that compare B1 with Ours (table3, table4). The
statistics are pure: per-seed values in, mean, spread and paired differences with a t-based 95%
confidence interval out.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python experiments/x.py` from a checkout without an install

from fedmpi.analyze import ResultFileError, format_table, load_run, summarize  # noqa: E402


@dataclass(frozen=True)
class Job:
    name: str  # the result file's stem
    config: Path | None  # a YAML file, or None for the embedded default
    overrides: tuple[str, ...] = ()
    labels: dict[str, Any] = field(default_factory=dict, compare=False)  # what the tables group by


def is_complete(path: Path) -> bool:
    try:
        return load_run(path).complete
    except ResultFileError:
        return False


def complete_paths(jobs: Sequence[Job], output_dir: Path) -> list[Path]:
    """The jobs' complete result files, in job order."""
    return [p for job in jobs if is_complete(p := output_dir / f"{job.name}.h5")]


def launch_command(job: Job, output_dir: Path, *, ranks: int = 1, threads: int | None = None,
                   overrides: Sequence[str] = ()) -> list[str]:
    """argv of one run; the sweep's overrides come last, so they win."""
    cmd = [sys.executable, "-m", "fedmpi.launch"]
    if job.config is not None:
        cmd += ["--config", str(job.config)]
    cmd += [*job.overrides, f"output.dir={output_dir}", f"output.name={job.name}", "output.overwrite=true"]
    if threads is not None:
        cmd.append(f"runtime.num_threads={threads}")
    cmd += list(overrides)
    if ranks > 1:
        mpiexec = Path(sys.executable).parent / "mpiexec"
        cmd = [str(mpiexec) if mpiexec.exists() else (shutil.which("mpiexec") or "mpiexec"), "-n", str(ranks), *cmd]
    return cmd


def run_sweep(jobs: Sequence[Job], output_dir: Path, *, ranks: int = 1, parallel: int = 1,
              overrides: Sequence[str] = (), describe: Callable[[Path], str] | None = None) -> int:
    """Run ``jobs`` (``parallel`` at a time, each with cores / (parallel * ranks) threads); returns how many failed."""
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // (parallel * ranks)) if parallel > 1 else None

    def one(i: int, job: Job) -> bool:
        counter, path = f"[{i + 1}/{len(jobs)}]", output_dir / f"{job.name}.h5"
        if is_complete(path):
            print(f"{counter} {job.name}: complete result exists, skipped", flush=True)
            return True
        start = time.perf_counter()
        with path.with_suffix(".log").open("w") as log:
            code = subprocess.call(launch_command(job, output_dir, ranks=ranks, threads=threads, overrides=overrides),
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        seconds = time.perf_counter() - start
        if code != 0 or not is_complete(path):
            print(f"{counter} {job.name}: FAILED (exit {code}) after {seconds:.0f} s; see {path.with_suffix('.log')}", flush=True)
            return False
        s = summarize(load_run(path))
        extra = f", {describe(path)}" if describe else ""
        print(f"{counter} {job.name}: done in {seconds:.0f} s, final {s['final_metric']:.4f}, best {s['best_metric']:.4f}{extra}",
              flush=True)
        return True

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        ok = list(pool.map(lambda ij: one(*ij), enumerate(jobs)))
    return ok.count(False)


def add_sweep_options(parser: argparse.ArgumentParser, output_dir: Path) -> None:
    """The options ``run_and_collect`` reads: --overrides, --ranks, --jobs, --output-dir, --table-only."""
    parser.add_argument("--overrides", nargs="*", default=[], metavar="key.sub=value", help="passed to every run, last")
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--output-dir", type=Path, default=output_dir)
    parser.add_argument("--table-only", action="store_true")


def run_and_collect(jobs: Sequence[Job], args: Any, summary: Callable[[Job, Path], dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """A table script's common part: run ``jobs`` (unless ``args.table_only``), then summarise the complete ones.

    ``args`` carries the scripts' shared options (``add_sweep_options``): output_dir, ranks, jobs, overrides,
    table_only. Returns (number of failed runs, summaries of the complete result files).
    """
    failed = 0 if args.table_only else run_sweep(jobs, args.output_dir, ranks=args.ranks, parallel=args.jobs,
                                                 overrides=args.overrides)
    paths = [(job, args.output_dir / f"{job.name}.h5") for job in jobs]
    return failed, [summary(job, path) for job, path in paths if is_complete(path)]


# --- statistics (pure) ---------------------------------------------------------------------------


def finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof=1; NaN for one value) of the non-NaN values, and their count."""
    v = finite(values)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


def confidence_interval(values: Sequence[float | None], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of ``values`` (NaN, NaN with fewer than two)."""
    v = finite(values)
    if v.size < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, df=v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


@dataclass(frozen=True)
class Paired:
    """A - B over the seeds both sides have: mean, sd, 95% CI, how many seeds, how often A > B."""

    mean: float
    sd: float
    ci: tuple[float, float]
    num: int
    wins: int


def paired(a: dict[int, float], b: dict[int, float]) -> Paired:
    """Per-seed differences a[s] - b[s] over the seeds in both (NaN on either side drops the seed)."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds if not (math.isnan(a[s]) or math.isnan(b[s]))]
    mean, sd, num = mean_std(diffs)
    return Paired(mean, sd, confidence_interval(diffs), num, sum(d > 0 for d in diffs))


def curve_numbers(metric: np.ndarray, last_k: int) -> dict[str, float]:
    """Final, best and mean of the last k evaluated values of one accuracy curve."""
    m = metric[~np.isnan(metric)]
    if m.size == 0:
        return {"final": math.nan, "best": math.nan, "last_k": math.nan}
    return {"final": float(m[-1]), "best": float(m.max()), "last_k": float(m[-last_k:].mean())}


def mean_curve(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of (rounds, metric) curves, cut to the shortest, at the rounds every seed evaluated.

    Runs that evaluate every k rounds leave NaN between evaluations; those rounds are dropped so a
    plotted line joins the evaluated points.
    """
    length = min(len(values) for _, values in curves)
    rounds = np.asarray(curves[0][0][:length])
    values = np.stack([np.asarray(v[:length], dtype=float) for _, v in curves])
    evaluated = ~np.isnan(values).any(axis=0)
    return rounds[evaluated], values[:, evaluated].mean(axis=0)


# --- formatting ----------------------------------------------------------------------------------


def pm(mean: float, sd: float, scale: float = 1.0, digits: int = 2) -> str:
    """``12.34 ± 0.56`` (just the mean when sd is NaN, ``-`` when the mean is)."""
    if math.isnan(mean):
        return "-"
    return f"{mean * scale:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd * scale:.{digits}f}")


def paired_cell(p: Paired, scale: float = 1.0, digits: int = 2) -> str:
    """``-3.10 ± 1.20 [-5.9, -0.3] (n=3)``: mean ± sd, the 95% CI, the number of seeds."""
    ci = "" if math.isnan(p.ci[0]) else f" [{p.ci[0] * scale:.{digits}f}, {p.ci[1] * scale:.{digits}f}]"
    return f"{pm(p.mean, p.sd, scale, digits)}{ci} (n={p.num})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    if records:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)


def report_ours_vs_b1(output_dir: Path, summaries: Sequence[dict[str, Any]], *, title: str, caption: str,
                      header: Sequence[str], rows: Sequence[Sequence[str]],
                      paired_header: Sequence[str], pairs: Sequence[Sequence[str]]) -> None:
    """The results of a B1-vs-Ours table script (table3, table4), written to ``output_dir`` and printed.

    runs.csv holds ``summaries``, one record per run; table.md, headed ``title``, and the console, headed
    ``caption``, hold the cells (``header``, ``rows``: mean ± sd over seeds) and then Ours - B1 paired by
    seed (``paired_header``, ``pairs``).
    """
    write_csv(output_dir / "runs.csv", summaries)
    (output_dir / "table.md").write_text(
        f"# {title} (mean ± sd over seeds)\n\n{markdown_table(header, rows)}\n\n"
        f"## Ours - B1, paired by seed\n\n{markdown_table(paired_header, pairs)}\n")
    print(f"\n{caption}")
    print(format_table(rows, header))
    print("\nOurs - B1, paired by seed (mean ± sd [95% CI] (n))")
    print(format_table(pairs, paired_header))
    print(f"\nwritten: {output_dir}/table.md, runs.csv")
