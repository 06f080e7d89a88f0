"""A diverging client never makes the global model NaN: its update is rejected and recorded."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
from conftest import TINY_RUN, run_here, run_launch

from fedmpi.nonfinite import is_finite, split_finite
from fedmpi.payload import ClientUpdate

UPDATE = ClientUpdate(client=0, rank=0, num_samples=4, train_loss=1.0, seconds=0.0, ops=0.0, paper_bytes=8,
                      values=np.ones(2, np.float32), group_mask=None, scores=None)  # fmt: skip


def test_any_non_finite_number_rejects_the_update():
    assert is_finite(UPDATE)
    assert not is_finite(dataclasses.replace(UPDATE, values=np.array([1, np.nan], np.float32)))
    assert not is_finite(dataclasses.replace(UPDATE, values=np.array([np.inf, 0], np.float32)))
    assert not is_finite(dataclasses.replace(UPDATE, train_loss=float("nan")))
    assert not is_finite(dataclasses.replace(UPDATE, scores=np.array([np.nan], np.float32), group_mask=np.ones(1, bool)))
    bad = dataclasses.replace(UPDATE, client=1, train_loss=float("inf"))
    ok2 = dataclasses.replace(UPDATE, client=2)
    assert split_finite([UPDATE, bad, ok2]) == ([UPDATE, ok2], [bad])


def test_client_lr_1e30_is_rejected_and_the_global_model_stays_finite(tmp_path, capsys):
    args = [*TINY_RUN, "client.lr=1e30", f"output.dir={tmp_path}", "output.name=diverged"]
    path = run_here(args, progress=True)
    with h5py.File(path) as f:
        rejected = f["clients/rejected"][:]
        assert rejected.all() and len(rejected) == 10  # 2 rounds x 5 clients, every one diverged
        assert list(f["rounds/num_rejected"][:]) == [0, 5, 5]
        assert np.isfinite(f["final/trainable"][:]).all()
        assert np.isfinite(f["rounds/eval_loss"][:]).all()
    assert "10 non-finite client update(s) rejected" in capsys.readouterr().out


@pytest.mark.slow  # starts `python -m fedmpi.launch` in a subprocess
def test_on_nonfinite_fail_ends_the_run_naming_the_clients(tmp_path):
    args = [*TINY_RUN, "client.lr=1e30", "server.on_nonfinite=fail", f"output.dir={tmp_path}", "output.name=strict"]
    proc = run_launch(args)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "server.on_nonfinite=fail: round 1: client(s)" in proc.stderr
