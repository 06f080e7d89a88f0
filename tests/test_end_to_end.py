"""The whole path, config to HDF5, in one process and under mpiexec: results agree bit for bit.

The one-process runs happen in this process (conftest.run_here), once per setting for the module;
the multi-rank runs go through ``mpiexec python -m fedmpi.launch``.
"""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, TINY_RUN, run_here, run_launch

from fedmpi import results_schema as S
from fedmpi.analyze import load_run, summarize

SETTINGS = {
    "fedavg-random": ["strategy.name=fedavg", "server.selection=random"],
    "pruning-loss": ["strategy.name=head_pruning", "strategy.sparsity=0.5", "server.selection=loss"],
    "pruning-pre-train": [
        "strategy.name=head_pruning", "strategy.sparsity=0.75", "strategy.mask_timing=pre_train", "server.selection=loss",
    ],
    "random-pruning": [
        "strategy.name=head_pruning", "strategy.pruning=random", "strategy.weighting=samples", "strategy.sparsity=0.5",
    ],
}  # fmt: skip


def _run(tmp_path, name, settings, ranks):
    args = [*TINY_RUN, *settings, f"output.dir={tmp_path}", f"output.name={name}"]
    proc = run_launch(args, ranks=ranks)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp_path / f"{name}.h5", proc.stdout


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """setting -> its one-process result file, each run once for the whole module."""
    out, files = tmp_path_factory.mktemp("one_rank"), {}

    def get(setting):
        if setting not in files:
            files[setting] = run_here([*TINY_RUN, *SETTINGS[setting], f"output.dir={out}", f"output.name={setting}"])
        return files[setting]

    return get


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """(settings, ranks) -> the result file and stdout of that mpiexec run, each launched once for the module."""
    out, runs = tmp_path_factory.mktemp("launched"), {}

    def get(settings, ranks):
        key = (tuple(settings), ranks)
        if key not in runs:
            runs[key] = _run(out, f"run{len(runs)}-n{ranks}", settings, ranks=ranks)
        return runs[key]

    return get


def _same(a, b):
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for col in ("round", "train_loss", "eval_loss", "eval_metric", "upload_bytes_paper", "ops"):
            np.testing.assert_array_equal(fa["rounds"][col][:], fb["rounds"][col][:], err_msg=col)
        for col in ("client", "train_loss", "num_samples", "upload_bytes_paper", "upload_bytes_mpi", "download_bytes_mpi"):
            np.testing.assert_array_equal(fa["clients"][col][:], fb["clients"][col][:], err_msg=col)
        if "importance" in fa["clients"]:
            for col in S.CLIENT_GROUP_COLUMNS:  # importance, group_mask, measured_importance
                np.testing.assert_array_equal(fa["clients"][col][:], fb["clients"][col][:], err_msg=col)
        np.testing.assert_array_equal(fa[S.FINAL_TRAINABLE][:], fb[S.FINAL_TRAINABLE][:])


@pytest.mark.mpi
@pytest.mark.parametrize("setting", ["fedavg-random", "pruning-loss"])
def test_one_two_three_ranks_agree_bit_for_bit(one_rank, launched, setting):
    one = one_rank(setting)
    for ranks in (2, 3):
        many, out = launched(SETTINGS[setting], ranks)
        assert "round 2/2" in out and "results:" in out
        _same(one, many)
        with h5py.File(many) as f:
            assert f.attrs[S.ATTR_NUM_RANKS] == ranks
            assert f["rounds/mpi_bytes"][1] > 0


@pytest.mark.mpi
@pytest.mark.slow
def test_clients_per_step_and_eval_subset_agree_across_rank_counts(tmp_path):
    """Step groups are cut from the whole selection, so 1 and 3 ranks train the same groups."""
    settings = [*SETTINGS["pruning-loss"], "runtime.clients_per_step=2", "peft.lora.dropout=0", "server.eval_samples=40"]
    one = run_here([*TINY_RUN, *settings, f"output.dir={tmp_path}", "output.name=one"])
    three, out = _run(tmp_path, "three", settings, ranks=3)
    assert "2 client(s) per step" in out
    _same(one, three)
    with h5py.File(one) as f:
        assert np.all(np.isnan(f["clients/device_seconds"][:])) and np.all(f["clients/peak_memory_bytes"][:] > 0)  # CPU


@pytest.mark.parametrize("setting", ["pruning-pre-train", "random-pruning"])
def test_pruning_variants_run_and_record_heads(one_rank, setting):
    run = load_run(one_rank(setting))
    assert run.complete
    masks = run.clients["group_mask"]
    assert masks.shape[1] == run.attrs["num_groups_total"] > 0
    kept = masks.sum(axis=1)
    assert np.all(kept == kept[0]) and kept[0] < masks.shape[1]
    dense = run.clients["upload_bytes_paper"]
    assert np.all(dense > 0)


def test_result_file_layout_and_analyze(one_rank):
    run = load_run(one_rank("pruning-loss"))
    assert run.attrs["status"] == "complete"
    assert run.config["strategy"]["name"] == "head_pruning"
    np.testing.assert_array_equal(run.rounds["round"], [0, 1, 2])
    assert np.isnan(run.rounds["train_loss"][0]) and np.all(np.isfinite(run.rounds["eval_metric"]))
    assert len(run.clients["client"]) == 2 * 5
    summary = summarize(run, target=0.0)
    assert summary["rounds_to_target"] == 0 and summary["status"] == "complete"
    # Download beside upload: each client receives every adapter element whatever it uploads.
    per_client = run.clients["download_bytes_paper"]
    assert np.all(per_client == per_client[0]) and np.all(per_client > run.clients["upload_bytes_paper"])
    np.testing.assert_array_equal(run.rounds["download_bytes_paper"], [0, 5 * per_client[0], 5 * per_client[0]])
    assert np.all(run.rounds["download_bytes_mpi"] == 0)  # one process: nothing crosses MPI
    # What a rank would receive to train each client: the global vector (raw fp32) and the pickled selection.
    mpi = run.clients["download_bytes_mpi"]
    assert np.all(mpi == mpi[0]) and 4 * run.final_trainable.size < mpi[0] < 4 * run.final_trainable.size + 1000


@pytest.mark.mpi
def test_pure_server_rank_matches_training_rank_zero(tmp_path, one_rank):
    served, _ = _run(tmp_path, "served", [*SETTINGS["fedavg-random"], "server.trains_clients=false"], ranks=3)
    _same(one_rank("fedavg-random"), served)


def test_generation_on_real_e2e_data(tmp_path):
    if not (SHARED_DATA / "e2e_nlg").exists():
        pytest.skip("../shared/data/e2e_nlg is not beside the repository")
    args = [
        *TINY_RUN, "model.name=tiny-t5", "data.source=e2e_nlg", f"data.path={SHARED_DATA / 'e2e_nlg'}",
        "data.max_train_samples=120", "data.max_eval_samples=16", "data.max_target_length=16",
        "strategy.name=head_pruning", "server.num_rounds=1",
    ]  # fmt: skip
    run = load_run(run_here([*args, f"output.dir={tmp_path}", "output.name=gen"]))
    assert run.attrs["metric"] == "rougeL" and run.attrs["task_kind"] == "generation"
    assert np.all(np.isfinite(run.rounds["eval_loss"])) and np.all(run.rounds["eval_metric"] >= 0)
    assert {"encoder_self", "decoder_self", "cross"} <= set(run.groups["family_kinds"].tolist())


@pytest.mark.slow  # starts `python -m fedmpi.submit` in a subprocess
def test_submit_local_runs_a_real_job(tmp_path):
    cmd = [sys.executable, "-m", "fedmpi.submit", "--nodes", "1", "--tasks-per-node", "1", "--local",
           "--log-dir", str(tmp_path / "logs"), *TINY_RUN, "server.num_rounds=1", f"output.dir={tmp_path}", "output.name=sub"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert load_run(tmp_path / "sub.h5").complete


@pytest.mark.mpi
def test_bytes_crossing_mpi_shrink_with_sparsity(launched):
    """Round 1 of 2-rank runs that differ only in sparsity (0.5 is the pruning-loss run above): under loss
    selection every client is unseen in round 1, so the three runs train the same clients on the same ranks."""
    moved, downloads = {}, set()
    for sparsity in (0.0, 0.5, 0.75):
        settings = [f"strategy.sparsity={sparsity}" if s.startswith("strategy.sparsity=") else s for s in SETTINGS["pruning-loss"]]
        path, _ = launched(settings, 2)
        run = load_run(path)
        first = run.clients["round"] == 1
        moved[sparsity] = (int(run.rounds["mpi_bytes"][1]), int(run.clients["upload_bytes_mpi"][first].sum()))
        download = int(run.rounds["download_bytes_mpi"][1])
        # The new global vector to the other rank, plus the pickled selection (a few hundred bytes).
        assert 4 * run.final_trainable.size < download < 4 * run.final_trainable.size + 1000
        assert np.all(run.clients["download_bytes_mpi"][first] == download)  # one copy per client: 2 ranks send one
        downloads.add(download)
    assert len(downloads) == 1  # the global vector is broadcast whole at any sparsity
    assert moved[0.0][0] > moved[0.5][0] > moved[0.75][0]  # what rank 0 really received and sent
    assert moved[0.0][1] > moved[0.5][1] > moved[0.75][1]  # the clients' packed payloads
