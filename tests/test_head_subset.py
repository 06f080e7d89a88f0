"""Pruned heads removed from the forward and backward: same function as zeroed output columns, zero grads."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY_RUN, run_here, run_launch

from fedmpi import results_schema as rs
from fedmpi.client import LocalTrainer
from fedmpi.config import ClientConfig
from fedmpi.data import load_task, tokenize_split
from fedmpi.peft_methods import Lora
from fedmpi.models import TINY_NAMES, build_model, use_confidence_attention
from fedmpi.models.arch import arch_spec
from fedmpi.models.head_subset import check_supported, heads_removed

CASES = [(n, "classification") for n in TINY_NAMES] + [("tiny-t5", "generation"), ("tiny-bart", "generation")]
TEXTS = ["the cat sat on the mat", "hello world", "federated learning of attention heads"]


def build(name: str, kind: str, num_labels: int = 2):
    bundle = build_model(name, kind=kind, num_labels=num_labels if kind == "classification" else None,
                         method=Lora(rank=4), seed=0)
    use_confidence_attention(bundle.model)
    flat = bundle.layout.get_flat(bundle.model)
    noise = torch.randn(flat.shape, generator=torch.Generator().manual_seed(1))
    bundle.layout.set_flat(bundle.model, flat + 0.1 * noise)  # non-zero B: the adapters matter
    bundle.model.eval()  # no dropout: forwards are compared exactly
    return bundle


def make_batch(bundle) -> dict[str, torch.Tensor]:
    tok = bundle.tokenizer
    enc = tok(TEXTS, padding="max_length", max_length=11, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if bundle.kind == "classification":
        batch["labels"] = torch.tensor([0, 1, 1])
    else:
        target = tok(["a cat", "hi there world", "heads"], padding="max_length", max_length=6, return_tensors="pt")
        batch["labels"] = target["input_ids"].masked_fill(target["attention_mask"] == 0, -100)
    return batch


def kept_mask(head_map) -> np.ndarray:
    """Some heads of every module kept, except one module with none at all."""
    rng = np.random.default_rng(0)
    kept = rng.random(head_map.num_heads_total) < 0.5
    offsets = head_map.head_offsets
    kept[offsets[0] : offsets[1]] = False
    for i in range(1, len(head_map.modules)):
        kept[offsets[i]] = True
    return kept


def zero_pruned_output_columns(bundle, kept: np.ndarray) -> None:
    """The reference: the full model with the pruned heads' output-projection columns zeroed."""
    levels_up, rel = arch_spec(bundle.model.config.model_type).output_projection
    offsets = bundle.head_map.head_offsets
    with torch.no_grad():
        for i, spec in enumerate(bundle.head_map.modules):
            parts = spec.name.split(".")
            out = bundle.model.get_submodule(".".join([*parts[: len(parts) - levels_up], rel]))
            for h in np.flatnonzero(~kept[offsets[i] : offsets[i + 1]]):
                cols = slice(h * spec.head_dim, (h + 1) * spec.head_dim)
                if type(out).__name__ == "Conv1D":  # GPT-2: weight is (in, out)
                    out.weight[cols, :] = 0
                else:
                    out.weight[:, cols] = 0


@pytest.mark.parametrize("name,kind", CASES)
def test_removed_heads_compute_the_model_without_them(name: str, kind: str) -> None:
    bundle = build(name, kind)
    model, batch = bundle.model, make_batch(bundle)
    kept = kept_mask(bundle.head_map)
    with torch.no_grad():
        full = model(**batch).logits
        with heads_removed(model, bundle.head_map, kept):
            removed = model(**batch).logits
        restored = model(**batch).logits
        zero_pruned_output_columns(bundle, kept)
        reference = model(**batch).logits
    torch.testing.assert_close(removed, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(removed, full, atol=1e-4)  # the pruned heads did matter
    torch.testing.assert_close(restored, full, rtol=0, atol=0)  # the global model keeps all heads


@pytest.mark.parametrize("name,kind", CASES)
def test_kept_heads_get_full_shape_gradients_and_pruned_heads_none(name: str, kind: str) -> None:
    bundle = build(name, kind)
    model, batch = bundle.model.train(), make_batch(bundle)
    kept = kept_mask(bundle.head_map)
    with heads_removed(model, bundle.head_map, kept):
        model(**batch).loss.backward()
    layout = bundle.layout
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and p.grad.shape == p.shape for p in params if p.grad is not None)
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    assert grads.numel() == layout.numel
    head_index = torch.from_numpy(bundle.head_map.head_index.astype(np.int64))
    kept_elements = torch.from_numpy(np.append(kept, True))[head_index]
    assert grads[~kept_elements].eq(0).all()  # exactly zero, not small
    per_head = torch.zeros(bundle.head_map.num_heads_total).index_add_(
        0, head_index.clamp_min(0), grads.abs() * (head_index >= 0))
    assert (per_head[torch.from_numpy(kept)] > 0).all()  # every kept head trains


def test_unsupported_architecture_is_named() -> None:
    bundle = build("tiny-bert", "classification")
    bundle.model.config.model_type = "mystery"
    with pytest.raises(ValueError, match="does not support model type 'mystery'"):
        check_supported(bundle.model)


def test_trainer_leaves_pruned_heads_exactly_unchanged() -> None:
    task = load_task("embedded", seed=0, num_train=40, num_eval=8)
    bundle = build("tiny-bert", "classification", num_labels=task.num_labels)
    train = tokenize_split(task.train, bundle.tokenizer, kind=task.kind, max_length=24, max_target_length=8)
    trainer = LocalTrainer(bundle, train, ClientConfig(batch_size=8, lr=0.01), device=torch.device("cpu"), seed=0,
                           confidence=None, groups=bundle.groups)
    params = bundle.layout.get_flat(bundle.model).numpy().copy()
    kept = kept_mask(bundle.head_map)
    result = trainer.train(np.arange(24), params, 1, 3, record_importance=False, trained_groups=kept, remove_untrained=True)
    pruned = ~bundle.head_map.element_mask(kept)
    assert np.all(result.delta[pruned] == 0)
    assert np.abs(result.delta[~pruned]).max() > 0
    again = trainer.train(np.arange(24), params, 1, 3, record_importance=False, trained_groups=kept, remove_untrained=True)
    np.testing.assert_array_equal(result.delta, again.delta)


REMOVED = ["strategy.name=head_pruning", "strategy.sparsity=0.75", "strategy.mask_timing=pre_train",
           "strategy.pruned_heads=removed", "server.selection=loss"]


@pytest.mark.mpi
@pytest.mark.slow
def test_removed_heads_one_and_three_ranks_agree_bit_for_bit(tmp_path) -> None:
    files = {None: run_here([*TINY_RUN, *REMOVED, f"output.dir={tmp_path}", "output.name=removed-None"])}
    proc = run_launch([*TINY_RUN, *REMOVED, f"output.dir={tmp_path}", "output.name=removed-3"], ranks=3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files[3] = tmp_path / "removed-3.h5"
    with h5py.File(files[None]) as one, h5py.File(files[3]) as three:
        for col in ("train_loss", "eval_loss", "eval_metric"):
            np.testing.assert_array_equal(one["rounds"][col][:], three["rounds"][col][:], err_msg=col)
        np.testing.assert_array_equal(one[rs.FINAL_TRAINABLE][:], three[rs.FINAL_TRAINABLE][:])
        assert yaml_value(one.attrs[rs.ATTR_CONFIG_YAML], "pruned_heads") == "removed"


def yaml_value(text: str, key: str) -> str:
    import yaml

    return yaml.safe_load(text)["strategy"][key]


def test_removed_needs_pre_train_masks() -> None:
    from fedmpi.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="pruned_heads=removed needs strategy.mask_timing=pre_train"):
        load_config(overrides=["strategy.name=head_pruning", "strategy.pruned_heads=removed"])
