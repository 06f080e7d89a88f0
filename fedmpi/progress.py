"""Rank-0 reporting of a run: one console line per round and the matching HDF5 rows.

Messages go to stdout with a flush, so they appear promptly under mpirun and
in Slurm logs; other ranks construct a disabled instance and print nothing.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from fedmpi.evaluation import EvalResult
from fedmpi.payload import COST_FIELDS, ClientUpdate
from fedmpi.results import ResultWriter
from fedmpi.results_schema import CLIENT_GROUP_MASK, CLIENT_IMPORTANCE, CLIENT_MEASURED_IMPORTANCE, ROUND_METRIC_COLUMNS

MIB = 2**20


def _client_list(clients: list[int], shown: int = 8) -> str:
    """``3 [4,17,52]``; long lists are cut after ``shown`` ids."""
    ids = ",".join(map(str, clients[:shown])) + (",..." if len(clients) > shown else "")
    return f"{len(clients)} [{ids}]"


class Progress:
    def __init__(self, enabled: bool = True, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.started = time.perf_counter()
        self.history: list[tuple[int, float]] = []  # (round, eval metric)
        self.total_paper_bytes = 0
        self.total_mpi_bytes = 0
        self.metric_name = "accuracy"
        self.num_rejected = 0

    def say(self, message: str) -> None:
        if self.enabled:
            print(f"[fedmpi] {message}", file=self.stream, flush=True)

    def round(
        self,
        writer: ResultWriter | None,
        round_: int,
        num_rounds: int,
        updates: list[ClientUpdate],
        evaluated: EvalResult | None,
        *,
        seconds: float,
        mpi_bytes: int,
        download_mpi: int = 0,
        client_download_mpi: int = 0,  # one rank's copy of the round's broadcasts: each client's download over MPI
        download_paper: list[int] | None = None,  # per update, same order
        rejected: list[int] = (),
    ) -> None:
        """Record one round (updates in client id order) and print its line.

        ``rejected``: clients whose non-finite update the server left out; the training loss
        is over the others.
        """
        download_paper = [0] * len(updates) if download_paper is None else download_paper
        accepted = [u for u in updates if u.client not in rejected]
        samples = np.array([u.num_samples for u in accepted], dtype=np.float64)
        losses = np.array([u.train_loss for u in accepted])
        train_loss = float((samples * losses).sum() / samples.sum()) if accepted else math.nan
        paper_bytes = sum(u.paper_bytes for u in updates)
        sparsity = float(np.mean([u.sparsity for u in updates])) if updates else 0.0
        eval_loss = evaluated.loss if evaluated else math.nan
        metric = evaluated.metric if evaluated else math.nan
        if writer is not None:
            self.metric_name = writer.metric
            if updates:
                self._write_clients(writer, round_, updates, download_paper, client_download_mpi, rejected)
            writer.append_round(
                {
                    "round": round_, "num_selected": len(updates), "train_loss": train_loss, "eval_loss": eval_loss,
                    "eval_metric": metric, "global_loss": eval_loss, "upload_bytes_paper": paper_bytes,
                    "mpi_bytes": mpi_bytes, "download_bytes_paper": sum(download_paper),
                    "download_bytes_mpi": download_mpi, "seconds": seconds, "sparsity": sparsity,
                    "ops": float(sum(u.ops for u in updates)),
                    **{column: (evaluated.metrics.get(name, math.nan) if evaluated else math.nan)
                       for column, name in ROUND_METRIC_COLUMNS.items()},
                    "num_rejected": len(rejected),
                }
            )  # fmt: skip
        self.total_paper_bytes += paper_bytes
        self.total_mpi_bytes += mpi_bytes
        self.num_rejected += len(rejected)
        if evaluated:
            self.history.append((round_, metric))
        parts = [f"round {round_:>{len(str(num_rounds))}}/{num_rounds}"]
        if updates:
            parts += [f"clients {_client_list([u.client for u in updates])}", f"train loss {train_loss:.4f}"]
        else:
            parts.append("initial model")
        if evaluated:
            parts.append(f"eval loss {eval_loss:.4f}")
            parts += [f"{name} {value:.4f}" for name, value in (evaluated.metrics or {self.metric_name: metric}).items()]
        if updates:
            parts.append(f"upload {paper_bytes / len(updates) / MIB:.3f} MiB/client")
        if rejected:
            parts.append(f"{len(rejected)} non-finite update(s) rejected")
        parts.append(f"{seconds:.1f} s")
        self.say(" | ".join(parts))

    @staticmethod
    def _write_clients(
        writer: ResultWriter, round_: int, updates: list[ClientUpdate], download_paper: list[int], download_mpi: int,
        rejected: list[int],
    ) -> None:
        rows = {
            "round": np.full(len(updates), round_, dtype=np.int32),
            "client": [u.client for u in updates],
            "rank": [u.rank for u in updates],
            "num_samples": [u.num_samples for u in updates],
            "train_loss": [u.train_loss for u in updates],
            "upload_bytes_paper": [u.paper_bytes for u in updates],
            "upload_bytes_mpi": [u.wire_bytes for u in updates],
            "download_bytes_paper": np.asarray(download_paper, dtype=np.int64),
            "download_bytes_mpi": np.full(len(updates), download_mpi, dtype=np.int64),
            "seconds": [u.seconds for u in updates],
            "ops": [u.ops for u in updates],
            **{k: [getattr(u, k) for u in updates] for k in COST_FIELDS},  # sparsity among them
            "rejected": [u.client in rejected for u in updates],
        }
        if writer.num_groups:
            n = writer.num_groups
            # NaN where the strategy measured no importance (FedAvg, random pruning).
            missing = np.full(n, np.nan, np.float32)
            rows[CLIENT_IMPORTANCE] = np.stack([u.scores if u.scores is not None else missing for u in updates])
            everything = np.ones(n, bool)
            rows[CLIENT_GROUP_MASK] = np.stack([everything if u.group_mask is None else u.group_mask for u in updates])
            rows[CLIENT_MEASURED_IMPORTANCE] = np.stack([missing if u.measured_scores is None else u.measured_scores
                                                         for u in updates])  # fmt: skip
        writer.append_clients(rows)

    def summary(self, path: Path) -> None:
        if self.history:
            final = self.history[-1][1]
            best_round, best = max(self.history, key=lambda rm: rm[1])
            self.say(
                f"done: final {self.metric_name} {final:.4f}, best {best:.4f} (round {best_round}); "
                f"{self.num_rejected} non-finite client update(s) rejected"
            )
        self.say(
            f"uploaded {self.total_paper_bytes / MIB:.2f} MiB (paper convention), {self.total_mpi_bytes / MIB:.2f} MiB "
            f"crossed MPI, {time.perf_counter() - self.started:.1f} s in all"
        )
        self.say(f"results: {path}")
