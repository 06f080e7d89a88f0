"""Generation with a decoder-only model (GPT-2): layout, target-only loss, left-padded generation, ROUGE, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, TINY_RUN, run_here

from fedmpi.analyze import load_run
from fedmpi.data import collate, load_task, tokenize_split
from fedmpi.data.task import TextSplit
from fedmpi.data.tokenize import collate_prompts
from fedmpi.evaluation import _rouge, evaluate_batches
from fedmpi.models import HeadConfidence, build_model, use_confidence_attention
from fedmpi.peft_methods import Lora

SPLIT = TextSplit(inputs=["name[Aromi], food[Thai]", "name[Bibimbap]"], labels=None,
                  targets=["Aromi serves Thai food.", "Bibimbap"])


@pytest.fixture(scope="module")
def gpt2():
    return build_model("tiny-gpt2", kind="generation", num_labels=None, method=Lora(rank=4), seed=0)


def test_sequence_is_prompt_eos_target_eos_and_labels_cover_the_target_only(gpt2):
    tok, eos = gpt2.tokenizer, gpt2.eos_token_id
    split = tokenize_split(SPLIT, tok, kind="generation", max_length=32, max_target_length=16, causal_lm=True)
    prompt = tok(SPLIT.inputs[1], add_special_tokens=False)["input_ids"]
    target = tok(SPLIT.targets[1], add_special_tokens=False)["input_ids"]
    assert split.input_ids[1].tolist() == prompt + [eos] + target + [eos]
    assert split.prompt_lengths[1] == len(prompt) + 1
    assert split.target_ids[1].tolist() == target + [eos]

    batch = collate(split, np.array([0, 1]), pad_token_id=gpt2.pad_token_id)
    row, n = batch["labels"][1].tolist(), len(prompt) + 1 + len(target) + 1
    # By hand: -100 on the prompt and its EOS, the target and its closing EOS, then -100 on the padding.
    assert row == [-100] * (len(prompt) + 1) + target + [eos] + [-100] * (batch["labels"].shape[1] - n)
    assert batch["attention_mask"][1].sum() == n


def test_padding_with_eos_keeps_the_closing_eos_a_target(gpt2):
    # Real GPT-2 pads with EOS: labels must come from lengths, not from comparing ids to the pad id.
    tok, eos = gpt2.tokenizer, gpt2.eos_token_id
    split = tokenize_split(SPLIT, tok, kind="generation", max_length=32, max_target_length=16, causal_lm=True)
    batch = collate(split, np.array([0, 1]), pad_token_id=eos)
    n = len(split.input_ids[1])
    assert batch["labels"][1, n - 1] == eos and (batch["labels"][1, n:] == -100).all()


def test_causal_loss_is_the_mean_over_target_tokens(gpt2):
    split = tokenize_split(SPLIT, gpt2.tokenizer, kind="generation", max_length=32, max_target_length=16, causal_lm=True)
    batch = collate(split, np.array([0, 1]), pad_token_id=gpt2.pad_token_id)
    model = gpt2.model.eval()
    with torch.no_grad():
        out = model(**batch)
        # Changing a prompt token's label position cannot matter: recompute over target positions only.
        logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
        keep = labels != -100
        by_hand = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert int(keep.sum()) == sum(len(split.target_ids[i]) for i in range(2))
    torch.testing.assert_close(out.loss, by_hand)
    model.train()


def test_left_padded_generation_matches_one_prompt_at_a_time(gpt2):
    task = load_task("e2e_nlg", path=str(SHARED_DATA / "e2e_nlg"), max_eval_samples=4) if (SHARED_DATA / "e2e_nlg").exists() else None
    split = tokenize_split(task.eval if task else SPLIT, gpt2.tokenizer, kind="generation", max_length=64,
                           max_target_length=8, causal_lm=True)
    n = len(split)
    assert len(set(split.prompt_lengths.tolist())) > 1  # prompts of different lengths: real padding
    model = gpt2.model.eval()
    options = dict(max_new_tokens=3, do_sample=False, pad_token_id=gpt2.pad_token_id, output_scores=True,
                   return_dict_in_generate=True)
    prompts = collate_prompts(split, np.arange(n), pad_token_id=gpt2.pad_token_id)
    assert (prompts["attention_mask"][:, -1] == 1).all() and (prompts["attention_mask"][:, 0] == 0).any()
    together = model.generate(**prompts, **options)
    for i in range(n):
        alone = model.generate(**collate_prompts(split, np.array([i]), pad_token_id=gpt2.pad_token_id), **options)
        for step in range(3):
            torch.testing.assert_close(together.scores[step][i], alone.scores[step][0], atol=1e-5, rtol=1e-5)
    model.train()


def test_rouge_scores_by_hand():
    scores = _rouge(["the cat sat", "dogs"], ["the cat sat down", "cats"])
    # ROUGE-1: P 3/3, R 3/4 -> F 6/7; ROUGE-2: P 2/2, R 2/3 -> F 0.8; ROUGE-L: LCS 3 -> 6/7.
    np.testing.assert_allclose(scores["rouge1"], [6 / 7, 0.0])
    np.testing.assert_allclose(scores["rouge2"], [0.8, 0.0])
    np.testing.assert_allclose(scores["rougeL"], [6 / 7, 0.0])
    assert list(scores) == ["rougeL", "rouge1", "rouge2"]  # the run's metric first


def test_evaluation_scores_only_the_generated_tokens(gpt2, monkeypatch):
    # A model whose generations are the prompt followed by the reference would score 1 if the
    # prompt were not cut off; here generate() returns prompt + the reference target ids.
    split = tokenize_split(SPLIT, gpt2.tokenizer, kind="generation", max_length=32, max_target_length=16, causal_lm=True)
    model = gpt2.model

    def echo_target(input_ids, attention_mask, **kwargs):
        assert kwargs["max_new_tokens"] == 16
        width = max(len(split.target_ids[i]) for i in range(len(split)))
        new = torch.full((input_ids.shape[0], width), gpt2.pad_token_id)
        for i in range(input_ids.shape[0]):
            t = split.target_ids[i].tolist()
            new[i, : len(t)] = torch.tensor(t)
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(model, "generate", echo_target)
    (loss, scores), = evaluate_batches(model, split, [(0, 2)], pad_token_id=gpt2.pad_token_id,
                                       device=torch.device("cpu"), tokenizer=gpt2.tokenizer)
    np.testing.assert_allclose(scores["rougeL"], [1.0, 1.0])
    np.testing.assert_allclose(scores["rouge2"], [1.0, 0.0])  # a one-word reference has no bigram
    assert np.all(np.isfinite(loss)) and np.all(loss > 0)


def test_head_confidence_records_on_a_causal_lm_batch(gpt2):
    from fedmpi.models.exclusion import importance_options

    split = tokenize_split(SPLIT, gpt2.tokenizer, kind="generation", max_length=32, max_target_length=16, causal_lm=True)
    batch = collate(split, np.array([0, 1]), pad_token_id=gpt2.pad_token_id)
    use_confidence_attention(gpt2.model)
    try:
        options = importance_options("eos", gpt2.tokenizer, gpt2.model.config, eos_token_id=gpt2.eos_token_id,
                                     pad_token_id=gpt2.pad_token_id)
        confidence = HeadConfidence(gpt2.model, gpt2.head_map, options=options, pad_token_id=gpt2.pad_token_id)
        with confidence.recording(batch):
            loss = gpt2.model(**batch).loss
        loss.backward()
        scores = confidence.scores()
        assert scores.shape == (gpt2.head_map.num_heads_total,) and np.all((scores > 0) & (scores <= 1))
        # Valid queries and keys: not padding, not EOS (the prompt separator and the closing EOS).
        tokens, decoder = confidence._validity(batch)
        expected = (batch["attention_mask"] == 1) & (batch["input_ids"] != gpt2.eos_token_id)
        assert decoder is None and torch.equal(tokens, expected)
    finally:
        gpt2.model.zero_grad(set_to_none=True)
        from fedmpi.models import set_attention

        set_attention(gpt2.model, "sdpa")


def test_gpt2_head_map_covers_fused_c_attn_for_causal_lm(gpt2):
    hm = gpt2.head_map
    assert [m.name.rsplit(".", 1)[-1] for m in hm.modules] == ["attn"] * 2 and hm.num_heads_total == 8
    assert all(m.kind == "self" for m in hm.modules)
    # Every B row of c_attn belongs to a head; A belongs to none.
    layout = gpt2.layout
    for i, name in enumerate(layout.names):
        part = hm.head_index[layout.offsets[i] : layout.offsets[i + 1]]
        assert (part >= 0).all() if ".lora_B." in name else (part == -1).all()


def test_gpt2_generation_on_real_e2e_end_to_end(tmp_path, capsys):
    if not (SHARED_DATA / "e2e_nlg").exists():
        pytest.skip("../shared/data/e2e_nlg is not beside the repository")
    args = [
        *TINY_RUN, "model.name=tiny-gpt2", "data.source=e2e_nlg", f"data.path={SHARED_DATA / 'e2e_nlg'}",
        "data.max_train_samples=96", "data.max_eval_samples=12", "data.max_length=48", "data.max_target_length=12",
        "strategy.name=head_pruning", "strategy.sparsity=0.5", "server.selection=cyclic", "client.lr=0.02",
        "server.evaluation=personal", f"output.dir={tmp_path}", "output.name=gpt2",
    ]  # fmt: skip
    path = run_here(args, progress=True)
    out = capsys.readouterr().out
    assert "rouge1" in out and "rouge2" in out and "rougeL" in out
    assert "evaluation: global (a personal evaluation needs class labels; this task has none)" in out
    run = load_run(path)
    assert run.complete and run.attrs["metric"] == "rougeL" and run.attrs["task_kind"] == "generation"
    assert run.attrs["evaluation"] == "global"  # a generation task has no label mix to score on
    np.testing.assert_array_equal(run.rounds["round"], [0, 1, 2])
    for column in ("eval_metric", "eval_rouge1", "eval_rouge2", "eval_loss"):
        values = run.rounds[column]
        assert np.all(np.isfinite(values)) and np.all(values >= 0), column
    assert np.all(run.rounds["eval_rouge1"] >= run.rounds["eval_metric"])  # an LCS is never longer than the overlap
    assert run.rounds["eval_loss"][-1] < run.rounds["eval_loss"][0]  # it learns the targets
    importance = run.clients["importance"]
    assert importance.shape[1] == 8 and np.all(np.isfinite(importance))
    assert np.all(run.clients["group_mask"].sum(axis=1) == 4)
