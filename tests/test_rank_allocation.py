"""FedARA's rank allocation: schedule and masks by hand, agreement with peft's AdaLoRA, triplet groups,
module pruning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import AdaLoraConfig
from peft.tuners.adalora import RankAllocator

from fedmpi.models.build import _load_backbone
from fedmpi.models.params import TrainableLayout
from fedmpi.models.svd_adapters import (
    AdapterCalls, TripletSensitivity, modules_pruned, svd_modules, triplet_groups, wrap_with_svd_adapters, zero_rank_modules,
)
from fedmpi.rank_allocation import (
    check_schedule, default_phases, module_ranks, rank_budget, smooth_sensitivity, top_triplets, weighted_scores,
)

# 10 rounds, 24 -> 12 triplets, 1 warm-up and 2 final rounds. By hand, rounds 2..8 fall as
# int(12 * (1 - (t - 1) / 7)^3 + 12): 12*216/343 = 7.56 -> 19, 12*125/343 = 4.37 -> 16,
# 12*64/343 = 2.24 -> 14, 12*27/343 = 0.94 -> 12, then 12.
SCHEDULE = dict(num_rounds=10, initial=24, final=12, warmup_rounds=1, final_rounds=2)
BY_HAND = [24, 19, 16, 14, 12, 12, 12, 12, 12, 12]


def test_budget_schedule_by_hand():
    assert [rank_budget(t, **SCHEDULE) for t in range(1, 11)] == BY_HAND
    with pytest.raises(ValueError, match="leaves no round for the budget to fall"):
        check_schedule(num_rounds=3, warmup_rounds=1, final_rounds=2)
    assert default_phases(50) == (5, 10) and default_phases(2) == (0, 0)
    check_schedule(3, *default_phases(3))


def tiny_svd_model(rank: int = 4, seed: int = 0):
    tokenizer, backbone, _ = _load_backbone("tiny-bert", kind="classification", num_labels=3, seed=seed)
    model = wrap_with_svd_adapters(
        backbone, kind="classification", targets=["query", "key", "value"], initial_rank=rank, alpha=8.0,
        dropout=0.0, orth_reg_weight=0.5, task_head=["classifier"], seed=seed,
    )
    batch = dict(tokenizer(["the cat sat", "a dog ran far away"], return_tensors="pt", padding=True))
    batch["labels"] = torch.tensor([0, 2])
    return model, batch


def test_schedule_matches_peft_rank_allocator():
    model, _ = tiny_svd_model(rank=4)  # 2 layers x (query, key, value) = 6 modules x 4 = 24 triplets
    config = AdaLoraConfig(init_r=4, target_r=2, tinit=1, tfinal=2, total_step=10, target_modules=["query"])
    allocator = RankAllocator(model.base_model.model, config, "default")
    assert (allocator.init_bgt, allocator.target_bgt) == (24, 12)
    assert [allocator.budget_schedule(t)[0] for t in range(1, 11)] == BY_HAND


def test_top_triplets_and_module_ranks_by_hand():
    scores = np.array([0.5, 0.1, 0.9, 0.5, 0.3, 0.0])
    allowed = np.array([True, True, True, True, True, False])
    # top 3 among allowed: 0.9 (id 2), then the tie 0.5 at ids 0 and 3.
    assert top_triplets(scores, 3, allowed).tolist() == [True, False, True, True, False, False]
    assert top_triplets(scores, 9, allowed).tolist() == allowed.tolist()  # a masked triplet never returns
    assert top_triplets(scores, 0, allowed).sum() == 0
    assert module_ranks(np.array([1, 0, 0, 0, 1, 1], bool), np.array([0, 2, 4, 6])).tolist() == [1, 0, 2]
    weighted = weighted_scores(np.array([[1.0, 0.0], [4.0, 2.0]]), np.array([1, 3]))
    assert weighted.tolist() == [(1 + 12) / 4, 6 / 4]


def test_sensitivity_and_mask_match_peft():
    model, batch = tiny_svd_model(rank=4)
    with torch.no_grad():
        for m in svd_modules(model).values():
            m.lora_E["default"].normal_()  # lambda starts at 0; give every factor a gradient
    ours = TripletSensitivity(model)
    config = AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=["query"])
    theirs = RankAllocator(model.base_model.model, config, "default")
    for _ in range(3):
        model.zero_grad()
        model(**batch).loss.backward()
        ours.update()
        theirs.update_ipt(model.base_model.model)
    for name, param in model.base_model.model.named_parameters():
        if ".lora_" in name:
            module, factor = name.rsplit(".", 2)[0], name.rsplit(".", 2)[1]
            smoothed, uncertainty = ours._state[(f"base_model.model.{module}", factor)]
            torch.testing.assert_close(smoothed, theirs.exp_avg_ipt[name], rtol=0, atol=0)
            torch.testing.assert_close(uncertainty, theirs.exp_avg_unc[name], rtol=0, atol=0)
    scores = ours.scores()
    pattern = theirs.mask_to_budget(model.base_model.model, budget=10)  # masks lambda in place, returns kept
    theirs_kept = np.concatenate([np.array(v) for v in pattern.values()])
    assert np.array_equal(top_triplets(scores, 10, np.ones(24, bool)), theirs_kept)


def test_triplet_groups_cover_each_factor_slice():
    model, _ = tiny_svd_model(rank=4)
    layout = TrainableLayout.from_model(model)
    groups = triplet_groups(model, layout)
    assert groups.num_groups == 24 and all(f.kind == "triplet" for f in groups.families)
    module = "base_model.model.bert.encoder.layer.1.attention.self.value"
    family = [f.name for f in groups.families].index(module)
    triplet = int(groups.offsets[family]) + 2
    mask = np.ones(24, bool)
    mask[triplet] = False
    kept = groups.element_mask(mask)
    # Not uploaded: exactly Q's row 2, lambda_2 and P's column 2 of that module.
    q = layout.slice_of(f"{module}.lora_A.default")
    lam = layout.slice_of(f"{module}.lora_E.default")
    p = layout.slice_of(f"{module}.lora_B.default")
    assert not kept[q].reshape(4, 32)[2].any() and kept[q].reshape(4, 32)[[0, 1, 3]].all()
    assert not kept[lam][2] and kept[lam].sum() == 3
    assert not kept[p].reshape(32, 4)[:, 2].any() and kept[p].reshape(32, 4)[:, [0, 1, 3]].all()
    assert int((~kept).sum()) == 32 + 1 + 32
    assert kept[layout.element_task_head_mask()].all()


def test_module_at_rank_zero_is_skipped_in_forward_and_backward():
    model, batch = tiny_svd_model(rank=4)
    layout = TrainableLayout.from_model(model)
    groups = triplet_groups(model, layout)
    mask = np.ones(groups.num_groups, bool)
    mask[groups.offsets[0] : groups.offsets[1]] = False  # every triplet of the first module
    pruned = zero_rank_modules(groups, mask)
    assert pruned == [groups.families[0].name]
    module = svd_modules(model)[pruned[0]]
    with torch.no_grad():
        module.lora_A["default"].fill_(float("nan"))  # would poison the output if the branch ran
    model.eval()
    with modules_pruned(model, pruned), AdapterCalls(model) as calls:
        assert not module.lora_A["default"].requires_grad
        out = model(**batch)
        assert torch.isfinite(out.logits).all()
        out.logits.sum().backward()
        assert module.lora_B["default"].grad is None
    # The forward hooks saw the pruned module's adapter branch never run, every other one once.
    assert calls.never_ran() == pruned and sorted(set(calls.counts.values())) == [0, 1]
    assert module.lora_A["default"].requires_grad and not module.disable_adapters
    assert torch.isnan(model(**batch).logits).any()
    assert calls.never_ran() == pruned  # the hooks are gone after the block


def test_smoothing_by_hand():
    smoothed, uncertainty = smooth_sensitivity(np.array([1.0]), np.array([0.0]), np.array([3.0]), 0.5, 0.5)
    # I = 0.5*1 + 0.5*3 = 2; U = 0.5*0 + 0.5*|3 - 2| = 0.5
    assert smoothed.tolist() == [2.0] and uncertainty.tolist() == [0.5]
