"""FedSA-LoRA through real runs: A averaged, B and task head per client in the store, resume, rank counts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_RUN

from fedmpi.analyze import load_run
from fedmpi.comm import LocalComm
from fedmpi.config import ConfigError, load_config
from fedmpi.lora_rules import client_weights
from fedmpi.payload import densify
from fedmpi.progress import Progress
from fedmpi.server import Server
from fedmpi.simulation import run

FEDSA = ["strategy.name=fedsa_lora", "peft.lora.rank=4", "data.num_train=120", "data.num_clients=4",
         "server.num_clients_per_round=3", "data.partition=dirichlet", "model.name=tiny-bert"]  # fmt: skip


def go(tmp_path, name, *extra):
    cfg = load_config(None, [*TINY_RUN, *FEDSA, f"output.dir={tmp_path}", f"output.name={name}", *extra])
    return run(cfg, LocalComm(), Progress(enabled=False))


@pytest.mark.slow
def test_a_is_averaged_and_each_client_keeps_its_own_b_and_head(tmp_path, monkeypatch):
    rounds = []
    apply = Server.apply

    def spy(self, updates, round_):
        s = self.strategy
        before = {u.client: s.store.get(u.client) for u in updates}
        rounds.append(dict(params=self.params.copy(), updates=sorted(updates, key=lambda u: u.client), before=before))
        apply(self, updates, round_)
        rounds[-1].update(after=self.params.copy(), stored={u.client: s.store.get(u.client) for u in updates}, strategy=s)

    monkeypatch.setattr(Server, "apply", spy)
    go(tmp_path, "spy", "server.num_rounds=2")
    seen_before = set()
    for r in rounds:
        s, updates = r["strategy"], r["updates"]
        p = client_weights(np.array([u.num_samples for u in updates]))
        deltas = [densify(u, s.groups.group_index).astype(np.float64) for u in updates]
        shared = ~s.private
        np.testing.assert_allclose(r["after"][shared], r["params"][shared] + sum(w * d[shared] for w, d in zip(p, deltas)), rtol=1e-6, atol=1e-8)
        np.testing.assert_array_equal(r["after"][s.private], r["params"][s.private])  # the global B / head never move
        for u, d in zip(updates, deltas):
            start = r["params"][s.private] if r["before"][u.client] is None else r["before"][u.client]
            assert (r["before"][u.client] is not None) == (u.client in seen_before)
            np.testing.assert_allclose(r["stored"][u.client], start + d[s.private], rtol=1e-6, atol=1e-8)
        seen_before |= {u.client for u in updates}
    assert any(v is not None for v in rounds[1]["before"].values())  # round 2 started someone from its own B


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "disk"])
def test_resume_in_the_middle_is_bit_identical(tmp_path, store):
    extra = [f"strategy.store={store}"]
    whole_extra = [*extra, f"strategy.store_dir={tmp_path / 'whole-store'}"] if store == "disk" else extra
    parts_extra = [*extra, f"strategy.store_dir={tmp_path / 'parts-store'}"] if store == "disk" else extra
    whole = load_run(go(tmp_path, "whole", "server.num_rounds=3", *whole_extra))
    go(tmp_path, "parts", "server.num_rounds=1", *parts_extra)
    parts = load_run(go(tmp_path, "parts", "server.num_rounds=3", "output.resume=true", *parts_extra))
    assert whole.final_trainable.tobytes() == parts.final_trainable.tobytes()
    np.testing.assert_array_equal(whole.rounds["eval_loss"], parts.rounds["eval_loss"])  # per-client models too
    np.testing.assert_array_equal(whole.clients["train_loss"], parts.clients["train_loss"])


def test_disk_store_needs_a_folder():
    with pytest.raises(ConfigError, match="strategy.store=disk needs strategy.store_dir"):
        load_config(None, ["strategy.name=fedsa_lora", "strategy.store=disk"])


@pytest.mark.mpi
def test_one_and_three_ranks_agree_bit_for_bit(tmp_path):
    from conftest import run_launch
    from test_end_to_end import _same

    one = go(tmp_path, "n1", "server.num_rounds=2")
    proc = run_launch([*TINY_RUN, *FEDSA, "server.num_rounds=2", f"output.dir={tmp_path}", "output.name=n3"], ranks=3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _same(one, tmp_path / "n3.h5")
