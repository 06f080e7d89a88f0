"""Paper Table 4 (effect of the backbone) at CPU scale: B1 vs Ours on each architecture, over seeds.

Rows follow the paper's: encoder-decoder (T5, BART) and encoder-only (DistilBERT, RoBERTa, and
BERT as the packaged pretrained MiniLM) models on NLI, and the decoder-only GPT-2 generating E2E.
Offline, the paper's MultiNLI becomes SICK (../shared/data/sick, premise/hypothesis pairs with
MultiNLI's labels), and every backbone but MiniLM is a randomly initialised ``tiny-*`` model (no
pretrained weights can be downloaded here): at this scale the table checks the pipeline and the
costs (upload per client-round, measured seconds per client-round), it does not reproduce the
paper's accuracies. Classification rows report accuracy; the GPT-2 row ROUGE-1/2/L.

B1 is FedAvg with random selection (the paper's baseline always selects randomly); Ours is
importance head pruning (Eq. 6-7) with Eq. 8 aggregation and loss selection (Eq. 9). Each
(row, method, seed) is one ``python -m fedmpi.launch`` run writing
<output-dir>/table4_<row>_<method>-s<seed>.h5 and a .log; complete results are not rerun.

    python experiments/table4.py --seeds 0 1 2 [--rows gpt2 t5] [--jobs 2] [--overrides server.num_rounds=8]
    python experiments/table4.py --seeds 0 1 2 --table-only
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python experiments/table4.py` from a checkout without an install
sys.path.insert(0, str(Path(__file__).resolve().parent))

from table1 import is_complete, markdown_table, mean_std  # noqa: E402

from fedmpi.analyze import format_table, load_run  # noqa: E402

DATA = REPO.parent / "shared" / "data"

# The federation shared by every row: 16 IID clients, 2 per round as in the paper (100/2), 16 rounds.
COMMON = [
    "data.num_clients=16", "data.partition=iid", "server.num_clients_per_round=2", "server.num_rounds=16",
    "client.batch_size=16", "client.lr=5e-3", "lora.rank=16", "server.eval_batch_size=64",
]  # fmt: skip
NLI = ["data.source=sick", f"data.path={DATA / 'sick'}", "data.max_train_samples=1920", "data.max_eval_samples=500",
       "data.max_length=64"]  # fmt: skip
E2E = ["data.source=e2e_nlg", f"data.path={DATA / 'e2e_nlg'}", "data.max_train_samples=1920", "data.max_eval_samples=64",
       "data.max_length=64", "data.max_target_length=32"]  # fmt: skip

# row -> (label, backbone and task overrides); in the paper's order.
ROWS: dict[str, tuple[str, list[str]]] = {
    "t5": ("T5 (tiny, encoder-decoder) / SICK", ["model.name=tiny-t5", *NLI]),
    "bart": ("BART (tiny, encoder-decoder) / SICK", ["model.name=tiny-bart", *NLI]),
    "distilbert": ("DistilBERT (tiny, encoder-only) / SICK", ["model.name=tiny-distilbert", *NLI]),
    "roberta": ("RoBERTa (tiny, encoder-only) / SICK", ["model.name=tiny-roberta", *NLI]),
    "minilm": ("BERT (MiniLM-L6, pretrained) / SICK", ["model.name=minilm", *NLI]),
    "gpt2": ("GPT-2 (tiny, decoder-only) / E2E", ["model.name=tiny-gpt2", *E2E, "client.lr=2e-2"]),
}
# method -> (label, overrides).
METHODS: dict[str, tuple[str, list[str]]] = {
    "b1": ("B1 FedAvg", ["strategy.name=fedavg", "server.selection=random"]),
    "ours": ("Ours", ["strategy.name=head_pruning", "strategy.pruning=importance", "strategy.weighting=importance",
                      "server.selection=loss"]),
}


@dataclass(frozen=True)
class Job:
    row: str
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"table4_{self.row}_{self.method}-s{self.seed}"


def launch_command(job: Job, args: argparse.Namespace) -> list[str]:
    """argv of one run; later overrides win (--overrides last)."""
    cmd = [sys.executable, "-m", "fedmpi.launch", *COMMON, *ROWS[job.row][1], *METHODS[job.method][1],
           f"strategy.sparsity={args.sparsity}", f"seed={job.seed}", f"output.dir={args.output_dir}",
           f"output.name={job.name}", "output.overwrite=true",
           f"runtime.num_threads={max(1, (os.cpu_count() or 1) // args.jobs)}"]
    return cmd + args.overrides


def run_one(job: Job, args: argparse.Namespace, counter: str) -> bool:
    path = args.output_dir / f"{job.name}.h5"
    if is_complete(path):
        print(f"{counter} {job.name}: complete result exists, skipped", flush=True)
        return True
    log, start = path.with_suffix(".log"), time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(launch_command(job, args), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if code != 0 or not is_complete(path):
        print(f"{counter} {job.name}: FAILED (exit {code}) after {seconds:.0f} s; see {log}", flush=True)
        return False
    s = run_summary(path, job)
    print(f"{counter} {job.name}: done in {seconds:.0f} s, final {s['metric']} {s['final']:.4f}", flush=True)
    return True


# --- the table (pure: per-run summaries in, rows out) --------------------------------------------


def _last_evaluated(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    done = values[~np.isnan(values)]
    return float(done[-1]) if done.size else math.nan


def run_summary(path: Path, job: Job) -> dict[str, Any]:
    """One run's figures: final metrics, and per client-round upload and measured seconds."""
    run = load_run(path)
    rounds, clients = run.rounds, run.clients
    return {
        "run": job.name, "row": job.row, "method": job.method, "seed": job.seed,
        "metric": str(run.attrs.get("metric", "metric")),
        "final": _last_evaluated(rounds["eval_metric"]),
        "rouge1": _last_evaluated(rounds["eval_rouge1"]) if "eval_rouge1" in rounds else math.nan,
        "rouge2": _last_evaluated(rounds["eval_rouge2"]) if "eval_rouge2" in rounds else math.nan,
        "upload_kib": float(np.mean(clients["upload_bytes_paper"])) / 1024 if len(clients["client"]) else math.nan,
        # The median: on a shared machine a few client-rounds can stall behind other jobs.
        "seconds_per_client_round": float(np.median(clients["seconds"])) if len(clients["client"]) else math.nan,
        "num_heads": int(run.attrs.get("num_heads_total", 0)),
    }  # fmt: skip


def _pm(mean: float, sd: float, scale: float = 1.0, digits: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean * scale:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd * scale:.{digits}f}")


HEADER = ["backbone / task", "method", "seeds", "heads", "accuracy %", "ROUGE-1 %", "ROUGE-2 %", "ROUGE-L %",
          "upload KiB/client-round", "s/client-round (median)"]  # fmt: skip


def table_cells(summaries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Mean ± sd over seeds, one line per (row, method) present, in ROWS x METHODS order."""
    out = []
    for row, (label, _) in ROWS.items():
        for method, (method_label, _) in METHODS.items():
            runs = [s for s in summaries if s["row"] == row and s["method"] == method]
            if not runs:
                continue
            stat = {k: mean_std([s[k] for s in runs])[:2] for k in ("final", "rouge1", "rouge2", "upload_kib",
                                                                     "seconds_per_client_round")}
            generation = runs[0]["metric"] == "rougeL"
            accuracy = "-" if generation else _pm(*stat["final"], 100, 1)
            rouge = [_pm(*stat[k], 100, 1) for k in ("rouge1", "rouge2")] + [_pm(*stat["final"], 100, 1)]
            out.append([label, method_label, str(len(runs)), str(runs[0]["num_heads"]), accuracy,
                        *(rouge if generation else ["-"] * 3), _pm(*stat["upload_kib"], digits=1),
                        _pm(*stat["seconds_per_client_round"], digits=3)])
    return out


def write_outputs(out_dir: Path, summaries: list[dict[str, Any]]) -> None:
    with (out_dir / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summaries[0]))
        writer.writeheader()
        writer.writerows(summaries)
    (out_dir / "table.md").write_text(f"# Table 4 at CPU scale (mean ± sd over seeds)\n\n"
                                      f"{markdown_table(HEADER, table_cells(summaries))}\n")


# --- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python experiments/table4.py", description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sparsity", type=float, default=0.9, help="Ours' head sparsity (the paper's standard 90%%)")
    p.add_argument("--overrides", nargs="*", default=[], metavar="key.sub=value", help="passed to every run, last")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores/jobs threads)")
    p.add_argument("--output-dir", type=Path, help="default: results/table4/cpu")
    p.add_argument("--table-only", action="store_true", help="run nothing; tabulate the result files there")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        raise SystemExit("--jobs must be >= 1")
    args.output_dir = (args.output_dir or REPO / "results" / "table4" / "cpu").resolve()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    jobs = [Job(r, m, s) for s in args.seeds for r in args.rows for m in args.methods]
    failed = 0
    if not args.table_only:
        counters = [f"[{i + 1}/{len(jobs)}]" for i in range(len(jobs))]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            failed = list(pool.map(lambda jc: run_one(jc[0], args, jc[1]), zip(jobs, counters))).count(False)
    done = [(args.output_dir / f"{job.name}.h5", job) for job in jobs]
    summaries = [run_summary(path, job) for path, job in done if is_complete(path)]
    if not summaries:
        print(f"no complete result files in {args.output_dir}")
        return 1
    write_outputs(args.output_dir, summaries)
    print(f"\nTable 4 at CPU scale ({len(summaries)}/{len(jobs)} runs; mean ± sd over seeds; Ours at "
          f"{args.sparsity:.0%} sparsity; upload: fp32 KiB per client per round, paper convention)")
    print(format_table(table_cells(summaries), HEADER))
    print(f"\nwritten: {args.output_dir}/table.md, runs.csv")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
