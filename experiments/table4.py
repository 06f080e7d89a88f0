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
(row, method, seed) is one run of experiments/sweep.py writing <output-dir>/table4_<row>_<method>-s<seed>.h5;
complete results are not rerun.

    python experiments/table4.py --seeds 0 1 2 [--rows gpt2 t5] [--jobs 2] [--overrides server.num_rounds=8]
    python experiments/table4.py --seeds 0 1 2 --table-only
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
    REPO, Job, add_sweep_options, mean_std, paired, paired_cell, pm, report_ours_vs_b1, run_and_collect,
)

from fedmpi.analyze import load_run  # noqa: E402

DATA = REPO.parent / "shared" / "data"

# The federation shared by every row: 16 IID clients, 2 per round as in the paper (100/2), 16 rounds.
COMMON = (
    "data.num_clients=16", "data.partition=iid", "server.num_clients_per_round=2", "server.num_rounds=16",
    "client.batch_size=16", "client.lr=5e-3", "server.eval_batch_size=64",
)  # fmt: skip
NLI = ("data.source=sick", f"data.path={DATA / 'sick'}", "data.max_train_samples=1920", "data.max_eval_samples=500",
       "data.max_length=64")  # fmt: skip
E2E = ("data.source=e2e_nlg", f"data.path={DATA / 'e2e_nlg'}", "data.max_train_samples=1920",
       "data.max_eval_samples=64", "data.max_length=64", "data.max_target_length=32")  # fmt: skip

# row -> (label, backbone and task overrides); in the paper's order.
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "t5": ("T5 (tiny, encoder-decoder) / SICK", ("model.name=tiny-t5", *NLI)),
    "bart": ("BART (tiny, encoder-decoder) / SICK", ("model.name=tiny-bart", *NLI)),
    "distilbert": ("DistilBERT (tiny, encoder-only) / SICK", ("model.name=tiny-distilbert", *NLI)),
    "roberta": ("RoBERTa (tiny, encoder-only) / SICK", ("model.name=tiny-roberta", *NLI)),
    "minilm": ("BERT (MiniLM-L6, pretrained) / SICK", ("model.name=minilm", *NLI)),
    # A randomly initialised decoder needs a larger step to move off uniform in 16 rounds.
    "gpt2": ("GPT-2 (tiny, decoder-only) / E2E", ("model.name=tiny-gpt2", *E2E, "client.lr=2e-2")),
}
METHOD_LABELS = {"b1": "B1 FedAvg", "ours": "Ours"}


def cell_job(row: str, method: str, seed: int, sparsity: float) -> Job:
    # B1 selects randomly (the paper's baseline always does); Ours is pruning + Eq. 8 + Eq. 9.
    method_overrides = ("strategy.name=fedavg", "server.selection=random") if method == "b1" else (
        "strategy.name=head_pruning", "strategy.pruning=importance", "strategy.weighting=importance",
        f"strategy.sparsity={sparsity}", "server.selection=loss")
    return Job(f"table4_{row}_{method}-s{seed}", None, (*COMMON, *ROWS[row][1], *method_overrides, f"seed={seed}"),
               {"row": row, "method": method, "seed": seed})


def _last_evaluated(values: np.ndarray) -> float:
    done = np.asarray(values, dtype=float)
    done = done[~np.isnan(done)]
    return float(done[-1]) if done.size else math.nan


def run_summary(job: Job, path: Path) -> dict[str, Any]:
    """One run's figures: final metrics, and per client-round upload and measured seconds."""
    run = load_run(path)
    rounds, clients = run.rounds, run.clients
    some = len(clients["round"]) > 0
    return {
        **job.labels, "metric": str(run.attrs.get("metric", "metric")),
        "final": _last_evaluated(rounds["eval_metric"]),
        "rouge1": _last_evaluated(rounds["eval_rouge1"]) if "eval_rouge1" in rounds else math.nan,
        "rouge2": _last_evaluated(rounds["eval_rouge2"]) if "eval_rouge2" in rounds else math.nan,
        "upload_kib": float(np.mean(clients["upload_bytes_paper"])) / 1024 if some else math.nan,
        # The median: on a shared machine a few client-rounds can stall behind other jobs.
        "client_seconds": float(np.median(clients["seconds"])) if some else math.nan,
    }  # fmt: skip


HEADER = ["backbone / task", "method", "seeds", "accuracy %", "ROUGE-1 %", "ROUGE-2 %", "ROUGE-L %",
          "upload KiB/client-round", "s/client-round (median)"]  # fmt: skip
PAIRED_HEADER = ["backbone / task", "Ours - B1: Δ accuracy or ROUGE-L (pts) [95% CI]", "upload ratio Ours/B1",
                 "seconds ratio Ours/B1"]  # fmt: skip


def tables(summaries: Sequence[dict[str, Any]]) -> tuple[list[list[str]], list[list[str]]]:
    """Mean ± sd over seeds per (row, method) in ROWS order, and Ours - B1 paired by seed."""
    rows, pairs = [], []
    for row, (label, _) in ROWS.items():
        cells = {m: [s for s in summaries if s["row"] == row and s["method"] == m] for m in METHOD_LABELS}
        for method, runs in cells.items():
            if not runs:
                continue
            stat = {k: mean_std([r[k] for r in runs])[:2] for k in ("final", "rouge1", "rouge2", "upload_kib", "client_seconds")}
            rouge = [pm(*stat[k], 100, 1) for k in ("rouge1", "rouge2", "final")]
            generation = runs[0]["metric"] == "rougeL"
            rows.append([label, METHOD_LABELS[method], str(len(runs)), "-" if generation else pm(*stat["final"], 100, 1),
                         *(rouge if generation else ["-"] * 3), pm(*stat["upload_kib"], digits=1),
                         pm(*stat["client_seconds"], digits=3)])
        if cells["b1"] and cells["ours"]:
            by = {m: {r["seed"]: r["final"] for r in runs} for m, runs in cells.items()}
            ratio = {k: mean_std([r[k] for r in cells["ours"]])[0] / mean_std([r[k] for r in cells["b1"]])[0]
                     for k in ("upload_kib", "client_seconds")}
            pairs.append([label, paired_cell(paired(by["ours"], by["b1"]), 100, 1), f"{ratio['upload_kib']:.3f}",
                          f"{ratio['client_seconds']:.3f}"])
    return rows, pairs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python experiments/table4.py", description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sparsity", type=float, default=0.9, help="Ours' head sparsity (the paper's standard 90%%)")
    add_sweep_options(p, REPO / "results" / "table4")
    args = p.parse_args(argv)
    jobs = [cell_job(r, m, seed, args.sparsity) for seed in args.seeds for r in args.rows for m in METHOD_LABELS]
    failed, summaries = run_and_collect(jobs, args, run_summary)
    if not summaries:
        print(f"no complete result files in {args.output_dir}")
        return 1
    rows, pairs = tables(summaries)
    report_ours_vs_b1(
        args.output_dir, summaries, title="Table 4 at CPU scale",
        caption=f"Table 4, CPU scale ({len(summaries)}/{len(jobs)} runs; mean ± sd over seeds; Ours at {args.sparsity:.0%} "
                "sparsity; upload: fp32 KiB per client-round, paper convention)",
        header=HEADER, rows=rows, paired_header=PAIRED_HEADER, pairs=pairs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
