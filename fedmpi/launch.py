"""Entry point: ``[mpirun -n N] python -m fedmpi.launch [--config FILE] [key.sub=value ...]``.

Thin by design: parse arguments, build the config and the communicator, run the loop,
and turn any failure into one clear message and a non-zero exit on every rank.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from fedmpi.comm import RankFailure, create_comm, launcher_rank
from fedmpi.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fedmpi.launch",
        description="Run a federated PEFT simulation (one process, or one MPI rank each under mpirun/srun).",
    )
    parser.add_argument("--config", help="YAML config file (default: the embedded default task on MiniLM)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides, e.g. server.num_rounds=20")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        # Every rank reads the same config and fails the same way: rank 0 alone reports it.
        if launcher_rank() == 0:
            print(f"fedmpi: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    comm = create_comm(cfg.runtime.comm)
    try:
        _quiet_libraries()
        from fedmpi.simulation import run

        run(cfg, comm)
        return 0
    except RankFailure as exc:
        if comm.rank == 0:
            print(f"fedmpi: {exc.describe()}", file=sys.stderr, flush=True)
        return 1
    except BaseException:  # noqa: BLE001 - a failure outside the guarded phases: end every rank now
        print(f"fedmpi: rank {comm.rank} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        if comm.size > 1:
            comm.abort(1)
        return 1


def _quiet_libraries() -> None:
    """Every rank loads the model: keep transformers' load reports and bars out of the run's log."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
