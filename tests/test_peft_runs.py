"""Non-LoRA methods through the whole path: config to HDF5, the same on 1 and 3 ranks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import TINY_RUN, run_here, run_launch

from fedmpi import results_schema as S

# IA3 with the paper's pruning and loss selection, over more rounds than C/K = 12/5, so that
# selection ranks finite losses (every client has trained once by round 3).
IA3_PRUNING = ["peft.method=ia3", "strategy.name=head_pruning", "strategy.sparsity=0.5", "server.selection=loss",
               "server.num_rounds=4"]  # fmt: skip


def _run(tmp_path, name, ranks):
    args = [*TINY_RUN, *IA3_PRUNING, f"output.dir={tmp_path}", f"output.name={name}"]
    if ranks is None:  # one process: in this one
        return run_here(args)
    proc = run_launch(args, ranks=ranks, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp_path / f"{name}.h5"


@pytest.mark.mpi
@pytest.mark.slow
def test_ia3_pruning_loss_selection_one_and_three_ranks_agree_bit_for_bit(tmp_path):
    one, three = _run(tmp_path, "one", None), _run(tmp_path, "three", 3)
    with h5py.File(one) as fa, h5py.File(three) as fb:
        assert fa.attrs[S.ATTR_NUM_RANKS] == 1 and fb.attrs[S.ATTR_NUM_RANKS] == 3
        for col in ("round", "train_loss", "eval_loss", "eval_metric", "upload_bytes_paper"):
            np.testing.assert_array_equal(fa["rounds"][col][:], fb["rounds"][col][:], err_msg=col)
        for col in ("client", "train_loss", "upload_bytes_paper"):
            np.testing.assert_array_equal(fa["clients"][col][:], fb["clients"][col][:], err_msg=col)
        np.testing.assert_array_equal(fa["clients/importance"][:], fb["clients/importance"][:])
        np.testing.assert_array_equal(fa["clients/group_mask"][:], fb["clients/group_mask"][:])
        np.testing.assert_array_equal(fa[S.FINAL_TRAINABLE][:], fb[S.FINAL_TRAINABLE][:])
        clients = fa["clients"]["client"][:]
        assert len(set(clients[-5:].tolist())) == 5 and fa["clients/group_mask"][:].sum(axis=1).max() < 16
