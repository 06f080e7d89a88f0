"""Per-round cost of every PEFT method, under FedAvg and the paper's method, side by side in one run.

The W1 workload of round_time.py (packaged MiniLM, the embedded task, 100 clients of 32 samples,
10 per round, batch 16, 64 tokens) with ``peft.method`` = lora (r16), ia3, prefix, prompt and
full, each under ``strategy.name=fedavg`` and under head pruning (importance, Eq. 8, 90%;
IA3 50%). Every variant is one ``python -m fedmpi.launch`` in a fresh process; the variants run
interleaved, rotated each repeat, and a run during which other processes used the cores is
marked ``*`` and left out of the medians (round_time.py's ``ForeignCpu``). Printed per variant:
seconds per round (mean over rounds 1..R-1, no evaluation in them), median seconds per
client-round, upload per client-round, and the ratios to LoRA + FedAvg and to the same method
under FedAvg.

    python benchmarks/peft_cost.py [--rounds 4] [--repeat 3] [--methods lora ia3 ...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from round_time import WORKLOAD, ForeignCpu, check_machine  # noqa: E402

from fedmpi.analyze import load_run  # noqa: E402

METHODS = {"lora": 0.9, "ia3": 0.5, "prefix": 0.9, "prompt": 0.9, "full": 0.9}  # peft.method -> Ours' sparsity
STRATEGIES = ("fedavg", "ours")
BASE = [o for o in WORKLOAD if not o.startswith(("peft.", "strategy."))]


@dataclass(frozen=True)
class Run:
    per_round: float  # mean seconds of rounds 1..R-1
    client_seconds: float  # median measured local training seconds per client-round
    upload_mib: float  # mean paper-convention upload per client-round
    disturbed: bool


def variant_overrides(method: str, strategy: str, rounds: int) -> list[str]:
    out = [*BASE, f"peft.method={method}", f"server.num_rounds={rounds}", f"server.eval_every={rounds}"]
    if strategy == "fedavg":
        return [*out, "strategy.name=fedavg"]
    return [*out, "strategy.name=head_pruning", "strategy.pruning=importance", f"strategy.sparsity={METHODS[method]}"]


def run_variant(method: str, strategy: str, rounds: int, out_dir: Path, name: str) -> Run:
    command = [sys.executable, "-m", "fedmpi.launch", *variant_overrides(method, strategy, rounds),
               f"output.dir={out_dir}", f"output.name={name}", "output.overwrite=true"]
    with ForeignCpu() as foreign:
        proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stdout}{proc.stderr}")
    run = load_run(out_dir / f"{name}.h5")
    measured = (run.clients["round"] >= 1) & (run.clients["round"] < rounds)
    return Run(
        per_round=float(np.mean(run.rounds["seconds"][1:rounds])),
        client_seconds=float(np.median(run.clients["seconds"][measured])),
        upload_mib=float(np.mean(run.clients["upload_bytes_paper"][measured])) / 2**20,
        disturbed=foreign.seconds > 0.05 * foreign.wall,
    )


def median_of(runs: list[Run], field: str) -> float:
    clean = [r for r in runs if not r.disturbed] or runs
    return statistics.median(getattr(r, field) for r in clean)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=4, help="rounds per run; 1..R-1 are measured (R >= 2)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--output-dir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be >= 2")
    out_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="fedmpi-peft-cost-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"workload: {' '.join(BASE)}; {args.rounds} rounds; result files: {out_dir}")
    check_machine()
    variants = [(m, s) for m in args.methods for s in STRATEGIES]
    results: dict[tuple[str, str], list[Run]] = {v: [] for v in variants}
    for i in range(args.repeat):
        shift = i % len(variants)
        for method, strategy in variants[shift:] + variants[:shift]:
            results[(method, strategy)].append(run_variant(method, strategy, args.rounds, out_dir, f"{method}-{strategy}-{i}"))
        print(f"repeat {i + 1}/{args.repeat}: " + ", ".join(f"{m}/{s} {results[(m, s)][-1].per_round:.2f}"
                                                          for m, s in variants), flush=True)
    base = ("lora", "fedavg") if ("lora", "fedavg") in results else variants[0]
    print(f"\n{'method':<8}{'strategy':<10}{'s/round':>9}{'s/client':>10}{'MiB/client':>12}"
          f"{'vs ' + '/'.join(base):>16}{'ours/fedavg':>13}   runs (s/round)")
    for method, strategy in variants:
        runs = results[(method, strategy)]
        per_round = median_of(runs, "per_round")
        vs_base = statistics.median(r.per_round / b.per_round for r, b in zip(runs, results[base]))
        ratio = "" if strategy == "fedavg" else f"{statistics.median(r.per_round / f.per_round for r, f in zip(runs, results[(method, 'fedavg')])):.3f}"
        listing = " ".join(f"{r.per_round:.2f}{'*' if r.disturbed else ''}" for r in runs)
        print(f"{method:<8}{strategy:<10}{per_round:>9.2f}{median_of(runs, 'client_seconds'):>10.3f}"
              f"{median_of(runs, 'upload_mib'):>12.4f}{vs_base:>16.3f}{ratio:>13}   {listing}")
    print("\nratios: medians over repeats of runs made in the same repeat; * = disturbed (left out of the medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
