"""The rank-0 writer's /devices table and its reading by fedmpi.analyze, also for files written before it existed."""

from __future__ import annotations

import h5py
import numpy as np

from fedmpi import analyze, importance_readers
from fedmpi import results_schema as S
from fedmpi.config import load_config
from fedmpi.devices import DeviceClass, DevicesConfig, profile_table
from fedmpi.results import ResultWriter, ServerState

PROFILE = DevicesConfig(classes=(
    DeviceClass(name="phone", memory_bytes=2e9, upload_bytes_per_round=1e6, speed=0.5, share=0.75),
    DeviceClass(name="laptop", flops_per_round=3e12, share=0.25),
))  # fmt: skip


def _writer(path, devices):
    return ResultWriter(
        path, run_name="r", config_yaml=load_config().to_yaml(), num_ranks=1, task_kind="classification",
        num_clients=4, group_families=[("attn", "self", 2)], devices=devices,
    )  # fmt: skip


def _client_rows(n: int, round_: int) -> dict[str, np.ndarray]:
    rows = {name: np.zeros(n, dtype) for name, dtype in {**S.CLIENT_COLUMNS, **S.CLIENT_COST_COLUMNS}.items()}
    rows["round"][:] = round_
    rows["client"] = np.arange(n, dtype=np.int64)
    rows["skipped_modules"][:] = 2
    return {**rows, S.CLIENT_IMPORTANCE: np.zeros((n, 2), np.float32), S.CLIENT_GROUP_MASK: np.ones((n, 2), bool),
            S.CLIENT_MEASURED_IMPORTANCE: np.ones((n, 2), np.float32)}  # fmt: skip


def _round_row(round_: int) -> dict[str, float]:
    return {name: round_ for name in S.ROUND_COLUMNS} | {name: np.nan for name in S.ROUND_METRIC_COLUMNS}


def test_the_profile_table_is_written_and_read_back(tmp_path):
    writer = _writer(tmp_path / "r.h5", profile_table(PROFILE, 4))
    writer.append_clients(_client_rows(2, 1))
    writer.append_round(_round_row(1))
    run = analyze.load_run(tmp_path / "r.h5")
    d = run.devices
    assert d["name"].tolist() == ["phone", "laptop"] and d["num_clients"].tolist() == [3, 1]
    assert d["share"].tolist() == [0.75, 0.25] and d["speed"].tolist() == [0.5, 1.0]
    np.testing.assert_array_equal(d["memory_bytes"], [2e9, np.nan])
    np.testing.assert_array_equal(d["flops_per_round"], [np.nan, 3e12])
    np.testing.assert_array_equal(d["upload_bytes_per_round"], [1e6, np.nan])
    rows = analyze.device_summary(run)
    assert [r["client_rounds"] for r in rows] == [2, 0]  # device_class 0 in both client rows
    text = analyze.format_run(analyze.summarize(run))
    assert "phone" in text and "unlimited" in text and "modules skipped / client-round  2.00" in text


def test_no_classes_and_files_from_before_the_table(tmp_path):
    _writer(tmp_path / "none.h5", None)
    with h5py.File(tmp_path / "none.h5") as f:
        assert f[S.GROUP_DEVICES]["name"].shape == (0,)  # written, with no rows
    assert analyze.load_run(tmp_path / "none.h5").devices == {}
    # An older file: no /devices, no skipped_modules and no measured_importance column; it reads, and a resume adds them.
    path = tmp_path / "old.h5"
    writer = _writer(path, None)
    writer.append_clients(_client_rows(3, 1))
    writer.append_round(_round_row(1))
    writer.checkpoint(ServerState(1, np.ones(4, np.float32), np.zeros(4), np.ones(4, np.int32), 0.5))
    with h5py.File(path, "r+") as f:
        del f[S.GROUP_DEVICES], f[S.GROUP_CLIENTS]["skipped_modules"], f[S.GROUP_CLIENTS][S.CLIENT_MEASURED_IMPORTANCE]
    old = analyze.load_run(path)
    assert old.devices == {} and "skipped_modules" not in old.clients and not importance_readers.has_measured_importance(old)
    assert "devices" not in analyze.format_run(analyze.summarize(old))
    ResultWriter.resume(path, config_yaml=load_config().to_yaml(), num_ranks=1, devices=profile_table(PROFILE, 4))
    back = analyze.load_run(path)
    assert back.devices["name"].tolist() == ["phone", "laptop"]
    assert back.clients["skipped_modules"].tolist() == [-1, -1, -1]  # unknown for the rows written before
    measured = back.clients[S.CLIENT_MEASURED_IMPORTANCE]
    assert measured.shape == (3, 2) and np.isnan(measured).all()
