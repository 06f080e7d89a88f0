"""fedmpi.analyze and fedmpi.importance_readers on synthetic h5py result files laid out as fedmpi.results_schema says."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from fedmpi import analyze, importance_readers
from fedmpi import results_schema as rs

MIB = 2**20
NAN = math.nan


def write_result(
    path: Path,
    rounds: dict[str, list],
    clients: dict[str, list],
    *,
    run_name: str,
    config_yaml: str,
    status: str = rs.STATUS_COMPLETE,
    num_ranks: int = 2,
    num_clients: int = 3,
    groups: dict[str, list] | None = None,
    final: np.ndarray | None = None,
) -> Path:
    """A result file as the rank-0 writer leaves it: resizable 1-D columns, optional groups and final vector."""
    num_groups_total = int(sum(groups["num_groups"])) if groups else 0
    with h5py.File(path, "w") as f:
        f.attrs.update({
            rs.ATTR_FORMAT_VERSION: rs.FORMAT_VERSION, rs.ATTR_RUN_NAME: run_name, rs.ATTR_CONFIG_YAML: config_yaml,
            rs.ATTR_FEDMPI_VERSION: "0.1.0", rs.ATTR_TORCH_VERSION: "2.4", rs.ATTR_TRANSFORMERS_VERSION: "5.0",
            rs.ATTR_PEFT_VERSION: "0.17", rs.ATTR_PYTHON_VERSION: "3.11", rs.ATTR_NUM_RANKS: np.int64(num_ranks),
            rs.ATTR_STARTED_AT: "2025-01-01T00:00:00", rs.ATTR_STATUS: status, rs.ATTR_METRIC: rs.METRIC_ACCURACY,
            rs.ATTR_TASK_KIND: rs.TASK_CLASSIFICATION, rs.ATTR_NUM_CLIENTS: np.int64(num_clients),
            rs.ATTR_NUM_GROUPS_TOTAL: np.int64(num_groups_total),
        })  # fmt: skip
        for group, columns, values in (
            (rs.GROUP_ROUNDS, rs.ROUND_COLUMNS, rounds),
            (rs.GROUP_CLIENTS, {**rs.CLIENT_COLUMNS, **rs.CLIENT_GROUP_COLUMNS}, clients),
        ):
            g = f.create_group(group)
            for name, dtype in columns.items():
                if name in values:
                    data = np.asarray(values[name], dtype=dtype)
                    g.create_dataset(name, data=data, maxshape=(None, *data.shape[1:]), chunks=True)
        if groups:
            g = f.create_group(rs.GROUP_GROUPS)
            g.create_dataset("family_names", data=groups["family_names"], dtype=h5py.string_dtype())
            g.create_dataset("family_kinds", data=groups["family_kinds"], dtype=h5py.string_dtype())
            g.create_dataset("num_groups", data=np.asarray(groups["num_groups"], np.int32))
        if final is not None:
            f.create_dataset(rs.FINAL_TRAINABLE, data=final.astype(np.float32))
    return path


def _clients(round_client: list[tuple[int, int]], **extra: Any) -> dict[str, list]:
    n = len(round_client)
    return {
        "round": [r for r, _ in round_client], "client": [c for _, c in round_client], "rank": [c % 2 for _, c in round_client],
        "num_samples": [10] * n, "train_loss": [1.0] * n, "upload_bytes_paper": [100] * n,
        "upload_bytes_mpi": [120] * n, "seconds": [0.5] * n, "ops": [1e9] * n, "sparsity": [0.0] * n, "rejected": [False] * n, **extra,
    }  # fmt: skip


@pytest.fixture
def complete_file(tmp_path: Path) -> Path:
    """5 rows (rounds 0-4), round 2 not evaluated; best 0.75 at round 3, final 0.72, target 0.7 first at round 3."""
    rounds = {
        "round": [0, 1, 2, 3, 4], "num_selected": [0, 2, 2, 2, 2],
        "train_loss": [NAN, 1.0, 0.8, 0.6, 0.5], "eval_loss": [1.2, 1.0, NAN, 0.7, 0.65],
        "eval_metric": [0.5, 0.6, NAN, 0.75, 0.72], "global_loss": [1.2, 1.0, NAN, 0.7, 0.65],
        "upload_bytes_paper": [0, MIB, MIB, 2 * MIB, MIB // 2], "mpi_bytes": [100, 200, 300, 400, 500],
        "seconds": [0.5, 2.0, 3.0, 4.0, 3.0], "sparsity": [0.0] * 5, "num_rejected": [0] * 5, "ops": [0.0, 1e9, 1e9, 1e9, 1e9],
    }  # fmt: skip
    clients = _clients([(r, c) for r in range(1, 5) for c in (0, 1)])
    config = "model:\n  name: minilm\nstrategy:\n  name: fedavg\nselection:\n  name: random\n"
    return write_result(tmp_path / "fedavg.h5", rounds, clients, run_name="fedavg-run", config_yaml=config,
                        num_ranks=4, final=np.arange(6))  # fmt: skip


@pytest.fixture
def killed_file(tmp_path: Path) -> Path:
    """Killed after round 2 (status still 'running'), with 2 modules x 2 heads of importance.

    `seconds` has one extra row, as when the kill lands between two dataset resizes.
    """
    rounds = {
        "round": [0, 1, 2], "num_selected": [0, 2, 2], "train_loss": [NAN, 0.9, 0.8], "eval_loss": [1.1, 1.0, 0.9],
        "eval_metric": [0.4, 0.55, 0.65], "global_loss": [1.1, 1.0, 0.9], "upload_bytes_paper": [0, 3 * MIB, MIB],
        "mpi_bytes": [10, 20, 30], "seconds": [1.0, 5.0, 7.0, 99.0], "sparsity": [0.0, 0.25, 0.5], "num_rejected": [0, 0, 0], "ops": [0.0, 1.0, 2.0],
    }  # fmt: skip
    importance = [[1, 2, 3, 4], [0, 0, 0, 0], [3, 2, 1, 0], [2, 2, 2, 4]]
    importance.append([9, 9, 9, 9])  # a row of round 3, which never finished: ignored
    round_client = [(1, 0), (1, 1), (2, 0), (2, 2), (3, 0)]
    clients = _clients(round_client, importance=importance, group_mask=np.ones((5, 4), bool))
    groups = {"family_names": ["layer.0.attn", "layer.1.attn"], "family_kinds": ["self"] * 2, "num_groups": [2, 2]}
    config = "model: tiny-bert\nstrategy:\n  name: head_pruning\nserver:\n  selection: loss\n"
    return write_result(tmp_path / "killed.h5", rounds, clients, run_name="killed-run", config_yaml=config,
                        status=rs.STATUS_RUNNING, groups=groups)  # fmt: skip


def test_rounds_to_target_is_first_round_reaching_it_ignoring_nan() -> None:
    rounds, metric = np.array([0, 1, 2, 3]), np.array([0.5, NAN, 0.7, 0.9])
    assert analyze.rounds_to_target(rounds, metric, 0.7) == 2
    assert analyze.rounds_to_target(rounds, metric, 0.5) == 0
    assert analyze.rounds_to_target(rounds, metric, 0.95) is None
    assert analyze.rounds_to_target(rounds[:0], metric[:0], 0.1) is None


def test_summary_of_complete_run(complete_file: Path) -> None:
    run = analyze.load_run(complete_file)
    assert run.config["strategy"] == {"name": "fedavg"} and run.complete
    assert run.final_trainable is not None and run.final_trainable.tolist() == [0, 1, 2, 3, 4, 5]
    s = analyze.summarize(run)
    assert (s["run"], s["model"], s["strategy"], s["selection"]) == ("fedavg-run", "minilm", "fedavg", "random")
    assert s["num_ranks"] == 4 and s["status"] == "complete" and s["last_round"] == 4
    assert s["final_metric"] == 0.72 and s["best_metric"] == 0.75 and s["best_round"] == 3
    assert s["rounds_to_target"] == 3
    assert analyze.summarize(run, target=0.6)["rounds_to_target"] == 1
    assert s["upload_mib_paper"] == 4.5  # (0 + 1 + 1 + 2 + 0.5) MiB
    assert s["mpi_bytes"] == 1500
    assert s["mean_round_seconds"] == 3.0  # rounds 1-4: (2 + 3 + 4 + 3) / 4; round 0 is evaluation only
    assert s["total_seconds"] == 12.5


def test_summary_of_killed_run_keeps_whole_rows(killed_file: Path) -> None:
    run = analyze.load_run(killed_file)
    assert not run.complete and run.final_trainable is None
    assert {len(a) for a in run.rounds.values()} == {3}
    assert run.groups["family_names"].tolist() == ["layer.0.attn", "layer.1.attn"]
    s = analyze.summarize(run)
    assert (s["model"], s["strategy"], s["selection"]) == ("tiny-bert", "head_pruning", "loss")
    assert run.clients["round"].tolist() == [1, 1, 2, 2] and run.clients["importance"].shape == (4, 4)
    assert s["status"] == "incomplete" and s["writer_status"] == "running" and s["last_round"] == 2
    assert s["rounds_to_target"] is None and s["best_round"] == 2 and s["final_metric"] == 0.65
    assert s["upload_mib_paper"] == 4.0 and s["mpi_bytes"] == 60
    assert s["mean_round_seconds"] == 6.0 and s["total_seconds"] == 13.0


def test_importance_matrix_and_client_distance(killed_file: Path) -> None:
    run = analyze.load_run(killed_file)
    np.testing.assert_array_equal(importance_readers.importance_matrix(run), [[2, 2, 2, 2], [0, 0, 0, 0], [2, 2, 2, 4]])
    at_1 = importance_readers.importance_matrix(run, round=1)
    np.testing.assert_array_equal(at_1[:2], [[1, 2, 3, 4], [0, 0, 0, 0]])
    assert np.isnan(at_1[2]).all()  # client 2 did not train in round 1
    expected = [[0, 4, 2], [4, 0, math.sqrt(28)], [2, math.sqrt(28), 0]]
    np.testing.assert_allclose(importance_readers.client_distance(run), expected)


def test_importance_is_every_heads_measured_score_where_recorded(tmp_path: Path, killed_file: Path) -> None:
    """Fig. 5's numbers: measured_importance (pruned heads included), not the uploaded scores (0 for pruned heads);
    a file from before that column (killed_file) gives its uploaded scores."""
    assert not importance_readers.has_measured_importance(analyze.load_run(killed_file))
    rounds = {"round": [0, 1], "num_selected": [0, 2], "train_loss": [NAN, 0.9], "eval_loss": [1.0, 0.9],
              "eval_metric": [0.4, 0.5], "global_loss": [1.0, 0.9], "upload_bytes_paper": [0, 1], "mpi_bytes": [0, 1],
              "seconds": [1.0, 1.0], "sparsity": [0.0, 0.5], "num_rejected": [0, 0], "ops": [0.0, 1.0]}  # fmt: skip
    mask = np.array([[True, False, True, False], [False, True, False, True]])
    measured = np.array([[4, 1, 3, 2], [1, 4, 2, 3]], np.float32)
    clients = _clients([(1, 0), (1, 1)], importance=measured * mask, group_mask=mask, measured_importance=measured)
    groups = {"family_names": ["attn"], "family_kinds": ["self"], "num_groups": [4]}
    run = analyze.load_run(write_result(tmp_path / "m.h5", rounds, clients, run_name="m", config_yaml="", groups=groups))
    assert importance_readers.has_measured_importance(run)
    np.testing.assert_array_equal(importance_readers.importance_matrix(run, round=1)[:2], measured)
    np.testing.assert_allclose(importance_readers.client_distance(run, round=1)[0, 1], math.sqrt(9 + 9 + 1 + 1))


def _pruned_lora_run(tmp_path: Path) -> analyze.Run:
    """A federated-LoRA run under strategy.head_pruning as the writer records it: two attention modules of two
    heads, then one group per LoRA module's A (kind "factor"), scored 0 and always kept."""
    rounds = {"round": [0, 1], "num_selected": [0, 2], "train_loss": [NAN, 0.9], "eval_loss": [1.0, 0.9],
              "eval_metric": [0.4, 0.5], "global_loss": [1.0, 0.9], "upload_bytes_paper": [0, 1], "mpi_bytes": [0, 1],
              "seconds": [1.0, 1.0], "sparsity": [0.0, 0.5], "num_rejected": [0, 0], "ops": [0.0, 1.0]}  # fmt: skip
    heads = np.array([[4, 1, 3, 2], [1, 4, 2, 3]], np.float32)
    head_mask = np.array([[True, False, True, False], [False, True, False, True]])
    measured = np.hstack([heads, np.zeros((2, 2), np.float32)])
    mask = np.hstack([head_mask, np.ones((2, 2), bool)])
    clients = _clients([(1, 0), (1, 1)], importance=measured * mask, group_mask=mask, measured_importance=measured)
    groups = {"family_names": ["l0.attn", "l1.attn", "l0.attn.query.lora_A", "l1.attn.query.lora_A"],
              "family_kinds": ["self", "self", "factor", "factor"], "num_groups": [2, 2, 1, 1]}  # fmt: skip
    return analyze.load_run(write_result(tmp_path / "p.h5", rounds, clients, run_name="p", config_yaml="", groups=groups))


def test_importance_has_one_column_per_head_and_no_lora_a_groups(tmp_path: Path) -> None:
    """Fig. 5's columns are the attention heads (one per module and head), not every group: the A groups
    the federated-LoRA strategies add under strategy.head_pruning are left out."""
    run = _pruned_lora_run(tmp_path)
    assert run.clients["measured_importance"].shape == (2, 6)
    np.testing.assert_array_equal(importance_readers.head_columns(run), [0, 1, 2, 3])
    np.testing.assert_array_equal(importance_readers.importance_rows(run), [[4, 1, 3, 2], [1, 4, 2, 3]])
    np.testing.assert_array_equal(importance_readers.importance_matrix(run, round=1)[:2], [[4, 1, 3, 2], [1, 4, 2, 3]])
    np.testing.assert_array_equal(importance_readers.kept_heads(run), [[True, False, True, False], [False, True, False, True]])
    np.testing.assert_allclose(importance_readers.client_distance(run, round=1)[0, 1], math.sqrt(9 + 9 + 1 + 1))


def test_fig5_of_a_pruned_lora_run_and_of_a_run_without_heads(tmp_path: Path) -> None:
    from fedmpi import figures

    assert "4.472" in figures.fig5([_pruned_lora_run(tmp_path)], tmp_path / "fig5.png")  # sqrt(20), over the heads
    rounds = {"round": [0, 1], "num_selected": [0, 1], "train_loss": [NAN, 0.9], "eval_loss": [1.0, 0.9],
              "eval_metric": [0.4, 0.5], "global_loss": [1.0, 0.9], "upload_bytes_paper": [0, 1], "mpi_bytes": [0, 1],
              "seconds": [1.0, 1.0], "sparsity": [0.0, 0.0], "num_rejected": [0, 0], "ops": [0.0, 1.0]}  # fmt: skip
    scores = np.array([[0.5, 0.2, 0.1]], np.float32)  # FedARA: one score per rank triplet, no head among them
    clients = _clients([(1, 0)], importance=scores, group_mask=np.ones((1, 3), bool), measured_importance=scores)
    groups = {"family_names": ["l0.attn.query"], "family_kinds": ["triplet"], "num_groups": [3]}
    run = analyze.load_run(write_result(tmp_path / "t.h5", rounds, clients, run_name="t", config_yaml="", groups=groups))
    with pytest.raises(ValueError, match=r"no attention-head groups recorded \(group family kinds: \['triplet'\]\)"):
        figures.fig5([run], tmp_path / "t.png")


def test_fig5_heatmap_has_a_column_per_head_and_dots_on_the_kept_heads(tmp_path: Path, monkeypatch) -> None:
    """The heatmap itself, not only its distances (which the A groups, 0 for every client, leave unchanged):
    4 head columns, not the run's 6 groups, and dots on the kept heads only, none on the always-kept A groups."""
    from fedmpi import figures

    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, out: saved.append(fig))
    figures.fig5([_pruned_lora_run(tmp_path)], tmp_path / "fig5.png")
    heatmap = saved[0].axes[0]
    assert heatmap.images[0].get_array().shape == (2, 4)  # (client-rounds, heads)
    dots = np.asarray(heatmap.collections[0].get_offsets())  # (head, client-round) per dot
    np.testing.assert_array_equal(dots[:, ::-1], [[0, 0], [0, 2], [1, 1], [1, 3]])


def test_importance_needs_groups(complete_file: Path) -> None:
    with pytest.raises(ValueError, match="no group importance"):
        importance_readers.importance_matrix(analyze.load_run(complete_file))


def test_run_table_text(killed_file: Path) -> None:
    text = analyze.format_run(analyze.summarize(analyze.load_run(killed_file)))
    lines = {line.split("  ")[0]: line.split("  ")[-1].strip() for line in text.splitlines()}
    assert lines["best accuracy"] == "0.6500 (round 2)"
    assert lines["rounds to accuracy >= 0.7"] == "-"
    assert lines["upload MiB (paper)"] == "4.00"
    assert lines["MPI bytes moved"] == "60 (0.00 MiB)"
    assert lines["status"] == "incomplete (writer status 'running', stopped after round 2)"


def test_failed_run_shows_its_error(killed_file: Path) -> None:
    with h5py.File(killed_file, "a") as f:
        f.attrs.update({rs.ATTR_STATUS: rs.STATUS_FAILED, rs.ATTR_ERROR: "CUDA out of memory"})
    text = analyze.format_run(analyze.summarize(analyze.load_run(killed_file)))
    assert text.splitlines()[-1].endswith("incomplete (writer status 'failed', stopped after round 2): CUDA out of memory")


def test_cli_tables_and_plot(complete_file: Path, killed_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert analyze.main([str(complete_file), str(killed_file)]) == 0
    out = capsys.readouterr().out
    assert "== fedavg-run ==" in out and "== killed-run ==" in out and "== comparison (target 0.7) ==" in out
    comparison = out.split("== comparison (target 0.7) ==\n")[1].splitlines()
    assert comparison[0].split() == ["run", "model", "strategy", "selection", "ranks", "final", "best", "best@", "to",
                                     "target", "upload", "MiB", "MPI", "bytes", "s/round", "total", "s", "status"]  # fmt: skip
    assert comparison[2].split() == ["fedavg-run", "minilm", "fedavg", "random", "4", "0.7200", "0.7500", "3", "3",
                                     "4.50", "1,500", "3.00", "12.5", "complete"]  # fmt: skip
    assert comparison[3].split()[-1] == "incomplete"
    png = complete_file.with_suffix(".png")  # default: next to the first file
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_path_and_no_plot(complete_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs" / "sub.png"
    assert analyze.main([str(complete_file), "--plot", str(out), "--target", "0.6"]) == 0
    assert out.stat().st_size > 0 and not complete_file.with_suffix(".png").exists()
    assert analyze.main([str(complete_file), "--no-plot"]) == 0
    assert not complete_file.with_suffix(".png").exists()


def test_cli_rejects_non_hdf5_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.h5"
    bad.write_text("not hdf5")
    assert analyze.main([str(bad)]) == 2
    assert f"{bad}: not an HDF5 file" in capsys.readouterr().err
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    assert analyze.main([str(tmp_path / "other.h5")]) == 2


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5"
    proc = subprocess.run([sys.executable, "-m", "fedmpi.analyze", str(missing)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "no such file" in proc.stderr


def test_runs_without_torch_or_mpi4py(complete_file: Path) -> None:
    # First as installed (neither may get imported), then with both made unimportable (it must still work).
    code = textwrap.dedent(f"""
        import sys
        if sys.argv[1] == "blocked":
            sys.modules["torch"] = sys.modules["mpi4py"] = None  # import -> ImportError
        from fedmpi import analyze, importance_readers
        assert analyze.main([{str(complete_file)!r}]) == 0
        if sys.argv[1] == "installed":
            assert not {{"torch", "mpi4py"}} & set(sys.modules), sorted({{"torch", "mpi4py"}} & set(sys.modules))
    """)
    for mode in ("installed", "blocked"):
        proc = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_reads_file_of_a_writer_killed_with_sigkill(tmp_path: Path) -> None:
    # The writer flushes after each round and then dies without closing the file.
    path = tmp_path / "sigkill.h5"
    code = textwrap.dedent(f"""
        import os, signal
        import h5py
        from fedmpi import results_schema as rs
        f = h5py.File({str(path)!r}, "w")
        f.attrs.update({{rs.ATTR_FORMAT_VERSION: rs.FORMAT_VERSION, rs.ATTR_RUN_NAME: "sigkill",
                         rs.ATTR_CONFIG_YAML: "model: m", rs.ATTR_STATUS: rs.STATUS_RUNNING}})
        g = f.create_group(rs.GROUP_ROUNDS)
        for name, dtype in rs.ROUND_COLUMNS.items():
            g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(64,))
        for r in range(3):
            for ds in g.values():
                ds.resize((r + 1,))
                ds[r] = r
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode != 0
    s = analyze.summarize(analyze.load_run(path))
    assert s["status"] == "incomplete" and s["last_round"] == 2 and s["total_seconds"] == 3.0


def test_result_files_leave_out_checkpoints(tmp_path):
    from fedmpi.analyze import result_files

    for name in ("b.h5", "a.h5", "a.ckpt.h5", "notes.txt"):
        (tmp_path / name).touch()
    assert [p.name for p in result_files(tmp_path)] == ["a.h5", "b.h5"]
