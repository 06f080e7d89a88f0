"""FedARA's rank allocation, pure: the global rank budget, triplet scores and the top-b mask.

FedARA (arXiv 2501.14406; `../shared/notes/platform.md` section 3) moves AdaLoRA's rank
allocation (Zhang et al. 2023) to the server, one step per round. The formulas are peft's
``RankAllocator`` (peft 0.21, ``peft/tuners/adalora/layer.py``) written as functions of
arrays, so that the server can run them on the clients' averaged scores and checkpoint their
state; ``tests/test_rank_allocation.py`` checks them against peft's own code:

- budget b(t) (``RankAllocator.budget_schedule``): ``initial`` for t <= t_i, ``final`` for
  t > T - t_f, else ``int((initial - final) * (1 - (t - t_i) / (T - t_f - t_i))**3 + final)``;
- smoothed sensitivity (``update_ipt``): s = |w * dL/dw|, I <- b1 I + (1 - b1) s,
  U <- b2 U + (1 - b2) |s - I|, element score I * U;
- triplet score (``mask_to_budget``): lambda_i's score + the mean over Q's row i (peft's
  ``lora_A``) + the mean over P's column i (``lora_B``).

The mask differs from peft in one documented way: peft zeroes every triplet at or below the
k-th smallest score (ties can drop more than asked); here exactly the top b(t) are kept, ties
going to the lower triplet id, and a triplet once masked stays masked (its score is 0: it no
longer trains), so the masks are nested and a pruned module never comes back.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BETA = 0.85  # b1 = b2 (AdaLoRA, FedARA)


def check_schedule(num_rounds: int, warmup_rounds: int, final_rounds: int) -> None:
    if warmup_rounds < 0 or final_rounds < 0:
        raise ValueError(f"warm-up ({warmup_rounds}) and final ({final_rounds}) rounds must be >= 0")
    if warmup_rounds >= num_rounds - final_rounds:
        raise ValueError(
            f"a {num_rounds}-round schedule with {warmup_rounds} warm-up and {final_rounds} final rounds "
            "leaves no round for the budget to fall; lower them or add rounds"
        )


def rank_budget(
    round_: int, *, num_rounds: int, initial: int, final: int, warmup_rounds: int, final_rounds: int
) -> int:
    """b(t) for round t (1-based): flat, cubic fall, flat (AdaLoRA's schedule, per round)."""
    check_schedule(num_rounds, warmup_rounds, final_rounds)
    if round_ <= warmup_rounds:
        return initial
    if round_ > num_rounds - final_rounds:
        return final
    remaining = 1 - (round_ - warmup_rounds) / (num_rounds - final_rounds - warmup_rounds)
    return int((initial - final) * remaining**3 + final)


def default_phases(num_rounds: int) -> tuple[int, int]:
    """(t_i, t_f) = 10% and 20% of the rounds (platform.md's defaults), leaving >= 1 falling round."""
    warmup, final = int(round(0.1 * num_rounds)), int(round(0.2 * num_rounds))
    while warmup >= num_rounds - final and (warmup or final):
        if final >= warmup and final:
            final -= 1
        else:
            warmup -= 1
    return warmup, final


def smooth_sensitivity(
    smoothed: np.ndarray, uncertainty: np.ndarray, sensitivity: np.ndarray, beta1: float, beta2: float
) -> tuple[np.ndarray, np.ndarray]:
    """One step of AdaLoRA's smoothing: (I, U) from the previous (I, U) and s = |w * grad|.

    Works on numpy arrays and torch tensors alike (only arithmetic and ``abs``).
    """
    smoothed = beta1 * smoothed + (1 - beta1) * sensitivity
    uncertainty = beta2 * uncertainty + (1 - beta2) * abs(sensitivity - smoothed)
    return smoothed, uncertainty


def triplet_scores(score_q: np.ndarray, score_lambda: np.ndarray, score_p: np.ndarray) -> np.ndarray:
    """Score per triplet i from element scores of Q (r x d_in), lambda (r x 1) and P (d_out x r)."""
    return np.asarray(score_lambda).reshape(-1) + np.asarray(score_q).mean(axis=1) + np.asarray(score_p).mean(axis=0)


def weighted_scores(scores: np.ndarray, num_samples: np.ndarray) -> np.ndarray:
    """The |D_c|-weighted mean of the clients' triplet scores (rows in client order), float64."""
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.asarray(num_samples, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != weights.shape[0]:
        raise ValueError(f"need one score row per client: {scores.shape} rows vs {weights.shape} sample counts")
    return weights @ scores / weights.sum()


def top_triplets(scores: np.ndarray, budget: int, allowed: np.ndarray) -> np.ndarray:
    """Bool mask of the ``budget`` highest-scoring allowed triplets (ties: lower id first)."""
    allowed = np.asarray(allowed, dtype=bool)
    if budget < 0:
        raise ValueError(f"rank budget must be >= 0, got {budget}")
    candidates = np.flatnonzero(allowed)
    order = candidates[np.argsort(-np.asarray(scores, dtype=np.float64)[candidates], kind="stable")]
    mask = np.zeros(allowed.shape[0], dtype=bool)
    mask[order[:budget]] = True
    return mask


def module_ranks(mask: np.ndarray, family_offsets: np.ndarray) -> np.ndarray:
    """Kept triplets per module (family), from the global triplet mask and the families' offsets."""
    return np.add.reduceat(np.asarray(mask, dtype=np.int64), family_offsets[:-1]) if mask.size else np.zeros(0)
