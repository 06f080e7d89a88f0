"""Seconds per federated round: a bare PyTorch loop vs fedmpi on 1 rank vs fedmpi on 2 ranks.

One fixed workload (packaged MiniLM + LoRA r=16 on q/k/v, the embedded task, 100 clients of
32 samples, 10 per round, batch 16, 64 tokens, FedAvg, random selection, lr 5e-4) runs
three ways, each in a fresh subprocess: (a) a plain PyTorch loop in one process with torch's
default threads (this script with ``--bare-only``), (b) ``python -m fedmpi.launch`` in one
process, (c) the same under ``mpiexec -n 2`` with one thread per rank. Targets: (b) within
5% of (a); (c) faster than (a).

Evaluation is kept out on both sides: fedmpi runs with ``server.eval_every=R``, so it
evaluates only the initial model (round 0) and after the last round R, and the measured
rounds are 1..R-1 (mean of ``/rounds/seconds``). The bare loop evaluates the initial model
untimed too (the same warm-up fedmpi gets in round 0) and then times R-1 training rounds.
Both sides pick the same clients and train them on the same batches with the same dropout
seeds; the per-round train losses are compared as a check that the work is the same.

    python benchmarks/round_time.py [--rounds 4] [--repeat 3] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from fedmpi import seeding
from fedmpi.analyze import load_run
from fedmpi.config import Config, load_config
from fedmpi.data import collate, load_task, partition_iid, tokenize_split
from fedmpi.models import build_model
from fedmpi.peft_methods import method_from_config
from fedmpi.selection import select_random

WORKLOAD = [
    "model.name=minilm", "peft.lora.rank=16", "data.source=embedded", "data.num_clients=100", "data.num_train=3200",
    "data.num_eval=64", "data.max_length=64", "server.num_clients_per_round=10", "client.batch_size=16",
    "client.lr=5e-4", "strategy.name=fedavg", "server.selection=random",
]  # fmt: skip
BUSY_LOAD = 0.5  # 1-minute load average above which another process is likely competing for the cores
DISTURBED = 0.05  # a run is disturbed if other processes used more than this share of one core meanwhile
LABELS = {"bare": "bare loop (1 proc, 2 thr)", "fed1": "fedmpi 1 rank (2 thr)", "fed2": "fedmpi 2 ranks (1 thr each)"}


@dataclass(frozen=True)
class Measured:
    seconds: list[float]  # wall seconds of each measured round (1..R-1)
    train_loss: list[float]  # sample-weighted mean client loss of each measured round
    foreign_cpu: float  # CPU seconds other processes used on the machine meanwhile
    wall: float  # seconds the measurement window lasted

    @property
    def per_round(self) -> float:
        return statistics.fmean(self.seconds)

    @property
    def disturbed(self) -> bool:
        return self.foreign_cpu > DISTURBED * self.wall


def overrides(rounds: int) -> list[str]:
    return [*WORKLOAD, f"server.num_rounds={rounds}", f"server.eval_every={rounds}"]


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignCpu:
    """Context manager: how much CPU processes other than us (and our children) used meanwhile."""

    def __enter__(self) -> ForeignCpu:
        self.start = (_busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own = _busy_cpu_seconds() - self.start[0], _own_cpu_seconds() - self.start[1]
        self.seconds = max(0.0, busy - own)
        self.wall = time.perf_counter() - self.start[2]


def bare_loop(cfg: Config) -> tuple[list[float], list[float]]:
    """Rounds 1..R-1 of FedAvg as a plain PyTorch loop: (seconds, train loss) per round.

    fedmpi's helpers only build the data and the model; the timed loop is plain PyTorch.
    """
    d, seed = cfg.data, cfg.seed
    task = load_task(d.source, seed=seed, num_train=d.num_train, num_eval=d.num_eval)
    bundle = build_model(cfg.model.name, kind=task.kind, num_labels=len(task.label_names), method=method_from_config(cfg.peft),
                         seed=seeding.torch_seed(seed, seeding.INIT))  # fmt: skip
    model, pad = bundle.model, bundle.pad_token_id
    train = tokenize_split(task.train, bundle.tokenizer, kind=task.kind, max_length=d.max_length)
    evaluation = tokenize_split(task.eval, bundle.tokenizer, kind=task.kind, max_length=d.max_length)
    partition = partition_iid(len(train), d.num_clients, seeding.rng(seed, seeding.PARTITION))
    params = [p for p in model.parameters() if p.requires_grad]
    global_state = [p.detach().clone() for p in params]
    model.eval()  # untimed, like fedmpi's round 0: evaluate the initial model (also warms up)
    with torch.no_grad():
        for start in range(0, len(evaluation), cfg.server.eval_batch_size):
            rows = np.arange(start, min(start + cfg.server.eval_batch_size, len(evaluation)))
            model(**collate(evaluation, rows, pad_token_id=pad))
    seconds, losses = [], []
    for round_ in range(1, cfg.server.num_rounds):
        begin = time.perf_counter()
        select_rng = seeding.rng(seed, seeding.SELECT, round_)
        clients = select_random(d.num_clients, cfg.server.num_clients_per_round, select_rng)
        sums = [torch.zeros_like(g, dtype=torch.float64) for g in global_state]
        total, loss_sum = 0, 0.0
        for client in clients.tolist():
            indices = partition.client_indices(client)
            with torch.no_grad():
                for p, g in zip(params, global_state):
                    p.copy_(g)
            torch.manual_seed(seeding.torch_seed(seed, seeding.DROPOUT, round_, client))
            order = seeding.rng(seed, seeding.SHUFFLE, round_, client).permutation(indices)
            optimizer = torch.optim.AdamW(params, lr=cfg.client.lr, weight_decay=cfg.client.weight_decay)
            model.train()
            client_loss = 0.0
            for start in range(0, order.size, cfg.client.batch_size):
                loss = model(**collate(train, order[start : start + cfg.client.batch_size], pad_token_id=pad)).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                client_loss += loss.item() * min(cfg.client.batch_size, order.size - start)
            with torch.no_grad():
                for s, p, g in zip(sums, params, global_state):
                    s.add_(p - g, alpha=indices.size)
            total += indices.size
            loss_sum += client_loss
        for s, g in zip(sums, global_state):
            g.add_((cfg.server.lr * s / total).to(g.dtype))
        seconds.append(time.perf_counter() - begin)
        losses.append(loss_sum / total)
    return seconds, losses


def run_variant(key: str, rounds: int, out_dir: Path, name: str) -> Measured:
    """One run in a fresh process: the bare loop (this script, ``--bare-only``) or fedmpi on 1 or 2 ranks."""
    if key == "bare":
        command = [sys.executable, __file__, "--rounds", str(rounds), "--bare-only"]
    else:
        output = [f"output.dir={out_dir}", f"output.name={name}", "output.overwrite=true"]
        command = [sys.executable, "-m", "fedmpi.launch", *overrides(rounds), *output]
        if key == "fed2":
            mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))
            command = [mpiexec, "-n", "2", *command, "runtime.num_threads=1"]
    with ForeignCpu() as foreign:
        proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stdout}{proc.stderr}")
    if key == "bare":  # the bare loop prints its result as the last stdout line
        seconds, losses = json.loads(proc.stdout.strip().splitlines()[-1])
    else:  # fedmpi's result file; row 0 is the initial evaluation, row R the evaluated last round
        rows = load_run(out_dir / f"{name}.h5").rounds
        seconds, losses = rows["seconds"][1:rounds].tolist(), rows["train_loss"][1:rounds].tolist()
    return Measured(seconds, losses, foreign.seconds, foreign.wall)


def check_machine() -> None:
    load1, load5, _ = os.getloadavg()
    print(f"load average: {load1:.2f} (1 min), {load5:.2f} (5 min); {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    if load1 > BUSY_LOAD:
        print(f"WARNING: the machine looks busy (1-min load {load1:.2f} > {BUSY_LOAD}); other processes compete "
              "for the cores and the figures below are then meaningless", flush=True)  # fmt: skip


def _ratio(runs: list[Measured], bare: list[Measured]) -> float:
    """Median over repeats of variant / bare of the same repeat (runs back to back), undisturbed pairs first."""
    pairs = list(zip(runs, bare))
    clean = [(m, b) for m, b in pairs if not (m.disturbed or b.disturbed)] or pairs
    return statistics.median(m.per_round / b.per_round for m, b in clean)


def report(results: dict[str, list[Measured]], rounds: int) -> None:
    print(f"\nseconds per round: mean over rounds 1..{rounds - 1} (no evaluation in them); s/round: median of the\n"
          f"undisturbed runs; vs bare: median of the per-repeat ratios; * = disturbed run (other processes used\n"
          f"more than {DISTURBED:.0%} of a core meanwhile)\n")  # fmt: skip
    print(f"{'variant':<29}{'s/round':>8}{'vs bare':>9}   runs (s/round)")
    ratios = {key: _ratio(runs, results["bare"]) for key, runs in results.items()}
    for key, label in LABELS.items():
        clean = [m for m in results[key] if not m.disturbed] or results[key]
        median = statistics.median(m.per_round for m in clean)
        runs = " ".join(f"{m.per_round:.2f}{'*' if m.disturbed else ''}" for m in results[key])
        print(f"{label:<29}{median:>8.2f}{ratios[key]:>9.3f}   {runs}")
    fed1, fed2 = ratios["fed1"], ratios["fed2"]
    print(f"\nfedmpi-1 / bare = {fed1:.3f}: target <= 1.05 {'MET' if fed1 <= 1.05 else 'NOT MET'}")
    print(f"fedmpi-2 / bare = {fed2:.3f}: target < 1.00 {'MET' if fed2 < 1.0 else 'NOT MET'}")
    gap = max(abs(a - b) for m in results["fed1"] + results["fed2"]
              for a, b in zip(m.train_loss, results["bare"][0].train_loss))  # fmt: skip
    print(f"same work check: max |train loss(fedmpi) - train loss(bare)| over measured rounds = {gap:.2e}")
    if any(all(m.disturbed for m in runs) for runs in results.values()):
        print("WARNING: every run of some variant was disturbed by other processes; the figures are meaningless")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run; rounds 1..R-1 are measured (R >= 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant; the median is reported")
    parser.add_argument("--output-dir", type=Path, default=None, help="fedmpi result files (default: a new tmp dir)")
    parser.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)  # internal: one bare run
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (the last round evaluates and is not measured)")
    hf_logging.set_verbosity_error()  # as fedmpi.launch does: no model-load report or bars in the output
    hf_logging.disable_progress_bar()
    cfg = load_config(None, overrides(args.rounds))
    if args.bare_only:
        print(json.dumps(bare_loop(cfg)))
        return 0
    out_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="fedmpi-round-time-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"workload: {' '.join(overrides(args.rounds))}\nresult files: {out_dir}")
    check_machine()
    results: dict[str, list[Measured]] = {key: [] for key in LABELS}
    for i in range(args.repeat):
        # Interleaved, so a slow spell of the machine hits every variant alike; rotated, so
        # no variant always runs first or right after the same other one.
        keys = list(LABELS)[i % 3 :] + list(LABELS)[: i % 3]
        for key in keys:
            results[key].append(run_variant(key, args.rounds, out_dir, f"round-time-{key}-{i}"))
        done = ", ".join(f"{key} {results[key][-1].per_round:.2f}" for key in LABELS)
        print(f"repeat {i + 1}/{args.repeat} (s/round): {done}", flush=True)
    report(results, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
