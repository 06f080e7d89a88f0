"""server.optimizer inside real runs (in-process, tiny BERT): Adam resumes bit for bit; sgd is today's step."""

from __future__ import annotations

import h5py

from fedmpi import results_schema as S
from fedmpi.output_files import checkpoint_path
import numpy as np
import pytest
from conftest import TINY_RUN

from fedmpi.comm import LocalComm
from fedmpi.config import load_config
from fedmpi.progress import Progress
from fedmpi.simulation import run

ADAM = ["server.optimizer=adam", "server.lr=0.01", "strategy.name=head_pruning", "strategy.sparsity=0.5"]


def run_here(tmp_path, name, *overrides):
    cfg = load_config(None, [*TINY_RUN, f"output.dir={tmp_path}", f"output.name={name}", *overrides])
    return run(cfg, LocalComm(), Progress(enabled=False))


def final(path):
    with h5py.File(path) as f, h5py.File(checkpoint_path(path)) as ckpt:  # the checkpoint is its own file
        return f["final/trainable"][:], {k: v[()] for k, v in ckpt[S.CHECKPOINT_STRATEGY].items()}


@pytest.mark.slow
def test_resume_in_the_middle_of_an_adam_run_is_bit_identical(tmp_path):
    whole = run_here(tmp_path, "whole", *ADAM, "server.num_rounds=2")
    run_here(tmp_path, "parts", *ADAM, "server.num_rounds=1")
    parts = run_here(tmp_path, "parts", *ADAM, "server.num_rounds=2", "output.resume=true")
    (a, state_a), (b, state_b) = final(whole), final(parts)
    assert a.tobytes() == b.tobytes()
    assert set(state_a) == {"server_optimizer.m", "server_optimizer.v", "server_optimizer.steps"}
    for key in state_a:
        assert state_a[key].tobytes() == state_b[key].tobytes(), key
    # Half the heads pruned by 5 clients: some elements were not sent every round, so their step counts lag.
    assert state_a["server_optimizer.steps"].max() == 2 and state_a["server_optimizer.steps"].min() < 2


def test_a_strategy_that_reinitialises_adapters_refuses_a_server_optimizer():
    from fedmpi.server import Server

    class Reinit:
        name, steps_by_delta = "reinit", False

    cfg = load_config(None, ["server.optimizer=adam"]).server
    with pytest.raises(ValueError, match="server.optimizer=adam needs a strategy whose update is a delta"):
        Server(cfg, Reinit(), 4, np.zeros(3, np.float32), 0)
