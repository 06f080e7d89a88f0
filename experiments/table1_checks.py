"""Checks that the Table 1 runs do what the method spec says, read back from their HDF5 files.

Per head-pruning run: each participation keeps round(H * (1 - sparsity)) heads; importance is 0
exactly on the pruned heads and spread (not constant) over the kept ones; how much the clients'
kept sets overlap (importance pruning on IID data picks nearly the same heads; random pruning
should not); upload bytes the same for every participation (about 0.55 x dense). Per loss-selection run:
after the first C/K rounds, every round's clients are the top-K by their last recorded train loss
(Eq. 9). With --with-model (needs torch): B rows of heads no client ever kept are still exactly
their initial value (zero) in the final global vector, and kept heads' rows moved.

    python experiments/table1_checks.py results/table1/cpu/*.h5 [--with-model]
"""

from __future__ import annotations

import argparse
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedmpi.analyze import Run, load_run  # noqa: E402


def check_pruning(run: Run) -> list[str]:
    c = run.clients
    s = run.config["strategy"]
    if s["name"] == "fedavg" or "group_mask" not in c:
        dense = "group_mask" not in c or bool(c["group_mask"].all())
        return [f"dense run: every head uploaded in every participation: {dense}; "
                f"upload bytes per participation: {sorted(set(c['upload_bytes_paper'].tolist()))}"]
    mask, imp = c["group_mask"].astype(bool), c["importance"].astype(np.float64)
    num_heads = mask.shape[1]
    kept = mask.sum(axis=1)
    expected = max(1, round(num_heads * (1 - s["sparsity"])))
    out = [f"kept heads per participation: {sorted(set(kept.tolist()))} (expected {expected} of {num_heads})"
           + ("" if (kept == expected).all() else "  <-- MISMATCH")]
    if s["pruning"] == "importance":
        zero_pruned = bool((imp[~mask] == 0).all())
        positive_kept = bool((imp[mask] > 0).all())
        spread = np.array([row[m].std() for row, m in zip(imp, mask)])
        out.append(f"importance: 0 on pruned heads {zero_pruned}, > 0 on kept {positive_kept}; kept scores "
                   f"{imp[mask].min():.3f}..{imp[mask].max():.3f}, per-client sd {spread.mean():.3f}"
                   + ("" if zero_pruned and positive_kept and spread.min() > 0 else "  <-- CHECK"))
    else:
        out.append(f"importance recorded: {'all zero (not measured)' if (imp == 0).all() else 'nonzero'}")
    jaccard = [np.sum(a & b) / np.sum(a | b) for a, b in combinations(mask, 2)]
    counts = mask.sum(axis=0)
    top = np.argsort(-counts, kind="stable")[:expected]
    out.append(f"distinct heads kept over the run: {int((counts > 0).sum())} of {num_heads}; mean Jaccard overlap of "
               f"two participations {np.mean(jaccard):.2f} (random: {expected / (2 * num_heads - expected):.2f}); "
               f"most kept heads {top.tolist()} kept {counts[top].tolist()} of {len(mask)} times")
    up = c["upload_bytes_paper"]
    out.append(f"upload bytes per participation: {sorted(set(up.tolist()))}")
    return out


def check_loss_selection(run: Run) -> list[str]:
    if run.config["server"]["selection"] != "loss":
        return []
    c, k = run.clients, int(run.config["server"]["num_clients_per_round"])
    num_clients = int(run.config["data"]["num_clients"])
    last = np.full(num_clients, np.inf)
    bad: list[int] = []
    exploring = -(-num_clients // k)
    for r in np.unique(c["round"]):
        rows = c["round"] == r
        chosen = c["client"][rows]
        others = np.delete(last, chosen)
        # Eq. 9: the chosen are the top K by last loss (unseen clients at +inf come first, any of them).
        if np.isinf(last).sum() >= k:
            ok = np.isinf(last[chosen]).all()
        else:
            ok = others.size == 0 or last[chosen].min() >= others.max()
        if not ok:
            bad.append(int(r))
        last[chosen] = c["train_loss"][rows]
    seen = np.bincount(c["client"], minlength=num_clients)
    # Stale losses fall as the global model improves, so Eq. 9 tends to revisit clients in the order it
    # first saw them (a round robin): count the later rounds that repeat the clients of round r - C/K.
    rounds = np.unique(c["round"])
    chosen_at = {int(r): set(c["client"][c["round"] == r].tolist()) for r in rounds}
    later = [int(r) for r in rounds if r - exploring in chosen_at]
    repeats = sum(chosen_at[r] == chosen_at[r - exploring] for r in later)
    return [f"loss selection: rounds not matching top-K by last loss (Eq. 9): {bad or 'none'}; participations per "
            f"client {seen.min()}..{seen.max()}; rounds that repeat the clients of round r - {exploring}: "
            f"{repeats}/{len(later)}"]


def check_final_vector(run: Run) -> list[str]:
    """Heads nobody kept keep their initial B (zero); needs the model for the head index."""
    from transformers.utils import logging as hf_logging

    from fedmpi.models import build_model
    from fedmpi.peft_methods import Lora

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    cfg = run.config
    options = cfg["peft"]["lora"] if "peft" in cfg else cfg["lora"]  # files written before issue 6: top-level lora
    lora = Lora(rank=options["rank"], alpha=options["alpha"], dropout=options["dropout"],
                target_modules=tuple(options["target_modules"] or ()) or None)
    bundle = build_model(cfg["model"]["name"], kind="classification", num_labels=_num_labels(run), method=lora, seed=0)
    index = bundle.groups.group_index
    final = run.final_trainable
    if final is None or "group_mask" not in run.clients:
        return []
    ever = run.clients["group_mask"].any(axis=0)
    never_rows = np.isin(index, np.flatnonzero(~ever))
    kept_rows = np.isin(index, np.flatnonzero(ever))
    return [f"final B of never-kept heads ({int((~ever).sum())}): max |value| {np.abs(final[never_rows]).max(initial=0):.3g}; "
            f"of kept heads: mean |value| {np.abs(final[kept_rows]).mean():.3g}"]


def _num_labels(run: Run) -> int:
    from fedmpi.data import load_task

    d = run.config["data"]
    task = load_task(d["source"], path=d["path"], seed=run.config["seed"], num_train=d["num_train"], num_eval=d["num_eval"])
    return len(task.label_names)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--with-model", action="store_true", help="also check the final vector (imports torch)")
    args = p.parse_args(argv)
    for path in args.files:
        run = load_run(path)
        lines = check_pruning(run) + check_loss_selection(run)
        if args.with_model:
            lines += check_final_vector(run)
        print(f"== {run.name}\n  " + "\n  ".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
