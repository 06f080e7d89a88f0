"""What measuring head importance costs: round time of the paper's method vs FedAvg, and peak memory.

1. ``rounds``: the W1 workload of ``benchmarks/round_time.py`` (MiniLM + LoRA r=16, 100
   clients, 10 per round, 32 samples, batch 16, 64 tokens) run by ``python -m fedmpi.launch``
   on one rank as FedAvg and as the paper's method (importance pruning at 90%, Eq. 8,
   confidence gathered during training beside SDPA), interleaved, ``--repeat`` times. The
   measured rounds are 1..R-1 (evaluation only at 0 and R). Target: Ours / FedAvg <= 1.10.
2. ``memory``: one training step at batch 80 x 512 tokens, in a fresh process per variant:
   FedAvg (plain forward/backward) vs Ours (the same step while ``HeadConfidence`` records).
   Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU, else the growth of the
   process's peak RSS over the step.

    python benchmarks/importance_cost.py rounds [--rounds 4] [--repeat 3]
    python benchmarks/importance_cost.py memory [--batch 80] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKLOAD = [
    "model.name=minilm", "peft.lora.rank=16", "data.source=embedded", "data.num_clients=100", "data.num_train=3200",
    "data.num_eval=64", "data.max_length=64", "server.num_clients_per_round=10", "client.batch_size=16",
    "client.lr=5e-4", "server.selection=random",
]  # fmt: skip
VARIANTS = {
    "fedavg": ["strategy.name=fedavg"],
    "ours": ["strategy.name=head_pruning", "strategy.sparsity=0.9", "strategy.pruning=importance",
             "strategy.weighting=importance"],
    "ours-uploaded": ["strategy.name=head_pruning", "strategy.sparsity=0.9", "strategy.score_on=uploaded"],
}  # fmt: skip


def round_seconds(variant: str, rounds: int, out_dir: Path, name: str, extra: list[str]) -> float:
    from fedmpi.analyze import load_run

    command = [sys.executable, "-m", "fedmpi.launch", *WORKLOAD, *VARIANTS[variant], f"server.num_rounds={rounds}",
               f"server.eval_every={rounds}", f"output.dir={out_dir}", f"output.name={name}", *extra]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stdout}\n{proc.stderr}")
    r = load_run(out_dir / f"{name}.h5").rounds
    measured = (r["round"] >= 1) & (r["round"] < rounds)
    return float(statistics.fmean(r["seconds"][measured]))


def bench_rounds(args: argparse.Namespace) -> None:
    variants = args.variants
    times: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            for v in variants:  # interleaved, so machine noise hits every variant alike
                times[v].append(round_seconds(v, args.rounds, Path(tmp), f"{v}-{rep}", args.overrides))
                print(f"  repeat {rep}: {v} {times[v][-1]:.3f} s/round", flush=True)
    base = statistics.median(times["fedavg"]) if "fedavg" in times else None
    print(f"\n{'variant':<15} {'median s/round':>15} {'all':>30} {'vs fedavg':>10}")
    for v in variants:
        med = statistics.median(times[v])
        ratio = f"{med / base:.3f}x" if base else "-"
        print(f"{v:<15} {med:>15.3f} {' '.join(f'{t:.2f}' for t in times[v]):>30} {ratio:>10}")
    if base and "ours" in times:
        ratio = statistics.median(times["ours"]) / base
        print(f"target Ours <= 1.10 x FedAvg: {'met' if ratio <= 1.10 else 'NOT met'} ({ratio:.3f}x)")


def one_step(variant: str, batch_size: int, seq_len: int) -> dict[str, float]:
    """In this process: one training step of MiniLM at batch x seq_len; peak memory of the step."""
    import torch
    from transformers.utils import logging as hf_logging

    from fedmpi.data import collate, load_task, tokenize_split
    from fedmpi.models import HeadConfidence, build_model, use_confidence_attention
    from fedmpi.peft_methods import Lora
    from fedmpi.models.exclusion import importance_options

    hf_logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task = load_task("embedded", seed=0, num_train=batch_size, num_eval=8)
    bundle = build_model("minilm", kind=task.kind, num_labels=task.num_labels, method=Lora(rank=16), seed=0)
    model = bundle.model.to(device).train()
    texts = task.train.inputs
    long = [" ".join(texts[(i + j) % len(texts)] for j in range(seq_len // 4)) for i in range(len(texts))]
    split = tokenize_split(dataclasses.replace(task.train, inputs=long), bundle.tokenizer, kind=task.kind,
                           max_length=seq_len)
    batch = {k: v.to(device) for k, v in collate(split, list(range(batch_size)), pad_token_id=bundle.pad_token_id).items()}
    recorder = None
    if variant == "ours":
        use_confidence_attention(model)
        options = importance_options("eos", bundle.tokenizer, model.config, eos_token_id=bundle.eos_token_id,
                                     pad_token_id=bundle.pad_token_id)
        recorder = HeadConfidence(model, bundle.head_map, options=options, pad_token_id=bundle.pad_token_id)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if recorder is not None:
        with recorder.recording(batch):
            loss = model(**batch).loss
    else:
        loss = model(**batch).loss
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": variant, "device": device.type, "tokens": int(batch["input_ids"].shape[1]),
            "peak_step_mib": peak / 2**20}


def bench_memory(args: argparse.Namespace) -> None:
    rows = []
    for variant in ("fedavg", "ours"):
        proc = subprocess.run([sys.executable, __file__, "step", variant, str(args.batch), str(args.seq_len)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{variant} step failed:\n{proc.stderr}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"one training step, batch {args.batch} x {rows[0]['tokens']} tokens, on {rows[0]['device']}")
    for row in rows:
        print(f"  {row['variant']:<7} peak memory of the step: {row['peak_step_mib']:9.1f} MiB")
    print(f"  ours / fedavg: {rows[1]['peak_step_mib'] / max(rows[0]['peak_step_mib'], 1e-9):.3f}x")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "step":  # internal: one measured step in a fresh process
        print(json.dumps(one_step(argv[1], int(argv[2]), int(argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    rounds = sub.add_parser("rounds")
    rounds.add_argument("--rounds", type=int, default=4)
    rounds.add_argument("--repeat", type=int, default=3)
    rounds.add_argument("--variants", nargs="+", default=["fedavg", "ours"], choices=sorted(VARIANTS))
    rounds.add_argument("overrides", nargs="*", help="extra config overrides for every variant")
    memory = sub.add_parser("memory")
    memory.add_argument("--batch", type=int, default=80)
    memory.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args(argv)
    (bench_rounds if args.part == "rounds" else bench_memory)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
