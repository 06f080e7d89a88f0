"""score_on=uploaded: eval-mode scoring after training is deterministic and independent of the rank count."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_RUN, run_here, run_launch

from fedmpi import results_schema as rs
from fedmpi.client import LocalTrainer
from fedmpi.config import ClientConfig, ConfigError, load_config
from fedmpi.data import load_task, tokenize_split
from fedmpi.peft_methods import Lora
from fedmpi.models import HeadConfidence, build_model, use_confidence_attention
from fedmpi.models.exclusion import importance_options


def _trainer():
    task = load_task("embedded", seed=0, num_train=40, num_eval=8)
    bundle = build_model("tiny-bert", kind="classification", num_labels=task.num_labels,
                         method=Lora(rank=4, dropout=0.3), seed=0)
    use_confidence_attention(bundle.model)
    options = importance_options("eos+bos", bundle.tokenizer, bundle.model.config,
                                 eos_token_id=bundle.eos_token_id, pad_token_id=bundle.pad_token_id)
    recorder = HeadConfidence(bundle.model, bundle.head_map, options=options, pad_token_id=bundle.pad_token_id)
    train = tokenize_split(task.train, bundle.tokenizer, kind=task.kind, max_length=24, max_target_length=8)
    trainer = LocalTrainer(bundle, train, ClientConfig(batch_size=8, lr=0.01), device=torch.device("cpu"), seed=0,
                           confidence=recorder, groups=bundle.groups)
    return trainer, bundle.layout.get_flat(bundle.model).numpy().copy()


def test_uploaded_scores_are_the_trained_models_eval_scores() -> None:
    trainer, params = _trainer()
    indices = np.arange(20)
    first = trainer.train(indices, params, 1, 2, record_importance=False, score_uploaded=True)
    second = trainer.train(indices, params, 1, 2, record_importance=False, score_uploaded=True)
    np.testing.assert_array_equal(first.scores, second.scores)
    # The same as scoring the uploaded vector afresh (eval mode: dropout off), in any batch order.
    np.testing.assert_allclose(trainer.measure_importance(indices[::-1].copy(), params + first.delta),
                               first.scores, rtol=1e-5, atol=1e-6)
    during = trainer.train(indices, params, 1, 2, record_importance=True)
    assert not np.allclose(during.scores, first.scores, atol=1e-6)  # training-mode scores see dropout


def test_uploaded_scoring_with_pre_train_masks_is_refused() -> None:
    with pytest.raises(ConfigError, match="score_on=uploaded scores the model after training"):
        load_config(overrides=["strategy.name=head_pruning", "strategy.mask_timing=pre_train",
                               "strategy.score_on=uploaded"])


OPTIONS = ["strategy.name=head_pruning", "strategy.sparsity=0.5", "strategy.score_on=uploaded",
           "strategy.importance_exclude=eos+bos", "strategy.skip_first_queries=1"]


@pytest.mark.mpi
@pytest.mark.slow
def test_uploaded_scores_agree_on_one_and_two_ranks(tmp_path) -> None:
    files = {}
    files[None] = run_here([*TINY_RUN, *OPTIONS, f"output.dir={tmp_path}", "output.name=uploaded-None"])
    proc = run_launch([*TINY_RUN, *OPTIONS, f"output.dir={tmp_path}", "output.name=uploaded-2"], ranks=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files[2] = tmp_path / "uploaded-2.h5"
    with h5py.File(files[None]) as one, h5py.File(files[2]) as two:
        np.testing.assert_array_equal(one[rs.GROUP_CLIENTS][rs.CLIENT_IMPORTANCE][:],
                                      two[rs.GROUP_CLIENTS][rs.CLIENT_IMPORTANCE][:])
        np.testing.assert_array_equal(one[rs.FINAL_TRAINABLE][:], two[rs.FINAL_TRAINABLE][:])
        strategy = yaml.safe_load(one.attrs[rs.ATTR_CONFIG_YAML])["strategy"]
    assert (strategy["score_on"], strategy["importance_exclude"], strategy["skip_first_queries"]) == (
        "uploaded", "eos+bos", 1)
