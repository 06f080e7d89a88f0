"""Entry point: ``[mpirun -n N] python -m fedmpi.launch [--config FILE] [--debug] [key.sub=value ...]``.

Thin by design: parse arguments, build the config and the communicator, run the loop,
and turn any failure into one clear message and a non-zero exit on every rank. Tracebacks
appear only with ``--debug`` (or FEDMPI_DEBUG=1). SIGTERM (Slurm's preemption, requeue
and scancel) and SIGINT end the run like a failure, so its result file says ``failed``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from pathlib import Path

from fedmpi.comm import (
    Communicator, PhaseTimeout, RankFailure, alone_in_world_message, collective, create_comm, describe_error, launcher_rank,
)  # fmt: skip
from fedmpi.config import Config, ConfigError, load_config
from fedmpi.output_files import check_result_path, run_name


# Seconds the other ranks give rank 0, after a signal, to mark the result file failed before they end
# the job themselves. Slurm signals every task at about the same time and kills them KillWait later
# (30 s by default), so rank 0 normally ends the job well before this runs out.
STOP_GRACE = 5.0


class Stopped(BaseException):
    """A signal asked the run to stop: not an error of any rank, so it escapes ``collective``."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fedmpi.launch",
        description="Run a federated PEFT simulation (one process, or one MPI rank each under mpirun/srun).",
    )
    parser.add_argument("--config", help="YAML config file (default: the embedded default task on MiniLM)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks (same as FEDMPI_DEBUG=1)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides, e.g. server.num_rounds=20")
    return parser


def _say(message: str) -> None:
    print(f"fedmpi: {message}", file=sys.stderr, flush=True)


def _stop_on_sigterm() -> None:
    def stop(signum: int, frame: object) -> None:
        raise Stopped(f"stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if args.debug:
        os.environ["FEDMPI_DEBUG"] = "1"
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        # Every rank reads the same config and fails the same way: rank 0 alone reports it.
        if launcher_rank() == 0:
            _say(str(exc))
        return 2
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    comm = create_comm(cfg.runtime.comm, phase_timeout=cfg.runtime.phase_timeout)
    if cfg.runtime.comm != "local" and (alone := alone_in_world_message(comm)):
        _say(alone)
        return 2
    from fedmpi.hub_access import settle_offline_mode

    if (note := settle_offline_mode(cfg)) and comm.rank == 0:
        _say(note)
    try:
        cfg.check_world(comm.size)
    except ConfigError as exc:
        if comm.rank == 0:
            _say(str(exc))
        return 2
    _stop_on_sigterm()
    try:
        cfg = _claim_output(cfg, comm)
        _quiet_libraries()
        from fedmpi.simulation import run

        run(cfg, comm)
        return 0
    except PhaseTimeout as exc:  # the missing rank will never answer: end the job from here
        _say(exc.describe())
        comm.abort(1)
        return 1
    except RankFailure as exc:
        if comm.rank == 0:
            _say(exc.describe())
        return 1
    except (Stopped, KeyboardInterrupt) as exc:  # every rank got the signal: rank 0 speaks
        if comm.rank == 0:
            _say(f"{exc or 'interrupted by SIGINT'}; the result file says failed and can be resumed (output.resume=true)")
        if comm.size > 1:
            if comm.rank != 0:  # rank 0 marks the file failed, then ends the job; an abort from here could cut it short
                time.sleep(STOP_GRACE)
            comm.abort(1)
        return 1
    except BaseException as exc:  # noqa: BLE001 - a failure outside the guarded phases: end every rank now
        _say(f"rank {comm.rank} failed: {describe_error(exc)}")
        if comm.size > 1:
            comm.abort(1)
        return 1


def _claim_output(cfg: Config, comm: Communicator) -> Config:
    """Fix the run's name (rank 0's) and let rank 0 claim its file, before anything slow is imported."""
    name = comm.bcast(run_name(cfg) if comm.rank == 0 else None)
    cfg = cfg.with_run_name(name)
    replace = cfg.output.overwrite or cfg.output.resume

    def claim() -> None:
        if comm.rank == 0:
            check_result_path(Path(cfg.output.dir), name, replace=replace)

    collective(comm, "output", claim, warmup=True)
    return cfg


def _quiet_libraries() -> None:
    """Every rank loads the model: keep transformers' load reports and bars out of the run's log."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
