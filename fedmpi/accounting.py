"""The paper's analytic cost figures: training OPs and upload bytes per client and round.

This module owns the *paper-convention* numbers only (Appendix A, Tables 1-4): the
multiply-accumulate count of one training sequence and the fp32 size of what a client
uploads, both computed from a model's dimensions and the run's settings. The rules were
decoded from the paper's tables in ``/work/shared/notes/accounting.md`` ("the note");
the garbled Table A.6 cannot be used as printed. What a run really costs (measured
seconds, bytes moved over MPI) is recorded elsewhere, beside these figures.

Pure: numpy/stdlib only; ``transformers`` is touched only through the config object
handed to :func:`attention_dims`. Run as ``python -m fedmpi.accounting`` it prints the
paper's Table 3 from the PEFT methods' head maps (``fedmpi/peft_costs.py``, which needs torch).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

PEFT_METHODS = ("lora", "full", "ia3", "prompt", "prefix")  # the config's peft.method names; prefix = P-tuning v2
NUM_VIRTUAL_TOKENS = 20  # Tp: prompt/P-tuning fit the tables with 20 virtual tokens (the note)
BYTES_PER_ELEMENT = 4  # fp32 (the note, "Communication")
_UNITS = {"MiB": 2**20, "KiB": 2**10, "B": 1}


@dataclass(frozen=True)
class AttentionDims:
    """The (L, H, d) of Table A.7, plus the FFN sizes IA3's upload needs."""

    num_blocks: int  # L: attention blocks (T5/BART: encoder self + decoder self + cross)
    num_heads: int  # H
    d_model: int  # d
    d_ff: int | None = None
    num_ffn: int | None = None  # FFN blocks (IA3 scales each FFN's inner activations)


# ---------------------------------------------------------------- dims from a HF config
def _t5(c: Any) -> AttentionDims:
    enc, dec = c.num_layers, c.num_decoder_layers or c.num_layers
    return AttentionDims(enc + 2 * dec, c.num_heads, c.d_model, c.d_ff, enc + dec)


def _bart(c: Any) -> AttentionDims:
    enc, dec = c.encoder_layers, c.decoder_layers
    if c.encoder_attention_heads != c.decoder_attention_heads:
        raise ValueError("config: encoder and decoder head counts differ; H is ambiguous")
    return AttentionDims(
        enc + 2 * dec, c.encoder_attention_heads, c.d_model, c.encoder_ffn_dim, enc + dec
    )


def _bert(c: Any) -> AttentionDims:
    n = c.num_hidden_layers
    return AttentionDims(n, c.num_attention_heads, c.hidden_size, c.intermediate_size, n)


def _distilbert(c: Any) -> AttentionDims:
    return AttentionDims(c.n_layers, c.n_heads, c.dim, c.hidden_dim, c.n_layers)


def _gpt2(c: Any) -> AttentionDims:
    return AttentionDims(c.n_layer, c.n_head, c.n_embd, c.n_inner or 4 * c.n_embd, c.n_layer)


_DIMS_READERS: dict[str, Callable[[Any], AttentionDims]] = {
    "t5": _t5, "mt5": _t5, "bart": _bart, "bert": _bert, "roberta": _bert,
    "distilbert": _distilbert, "gpt2": _gpt2,
}


def attention_dims(config: Any) -> AttentionDims:
    """L, H, d (and FFN sizes) of a transformers ``PretrainedConfig``.

    L counts every attention module (Table A.7 counts T5-small's 18 = 6 encoder self +
    6 decoder self + 6 cross). Note that Table A.7's DistilBERT (12 blocks) and RoBERTa
    (d = 512) rows are not what the real configs give; pass those dims by hand.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in _DIMS_READERS:
        raise ValueError(f"config.model_type {model_type!r} is not one of {sorted(_DIMS_READERS)}")
    return _DIMS_READERS[model_type](config)


# ---------------------------------------------------------------------------- OPs
def _check(*, peft: str = "lora", rank: int = 1, sparsity: float = 0.0, seq_len: int = 1) -> float:
    """Validate the shared keyword arguments; return keep = 1 - sparsity."""
    if peft not in PEFT_METHODS:
        raise ValueError(f"peft must be one of {PEFT_METHODS}, got {peft!r}")
    if not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity!r}")
    if not isinstance(seq_len, numbers.Integral) or seq_len < 1:
        raise ValueError(f"seq_len must be an integer >= 1, got {seq_len!r}")
    return 1.0 - sparsity  # exactly, not rounded to whole heads (the note, "Conventions")


def ops_per_sequence(
    dims: AttentionDims,
    *,
    peft: str = "lora",
    rank: int = 16,
    sparsity: float = 0.0,
    seq_len: int = 512,
    extra_unpruned_td2: bool = False,
    num_virtual_tokens: int = NUM_VIRTUAL_TOKENS,
) -> float:
    """Multiply-accumulates of one training sequence, forward + backward, over L blocks.

    Per-block rules from the note's "OPs per attention block" table (the decoded form of
    the paper's Appendix A, Table A.6); only head-attached terms scale with keep. The
    ``extra_unpruned_td2`` option adds L*T*d^2 (not pruned), which reproduces Table 2's
    BART row on 20 Newsgroups (the note).
    """
    keep = _check(peft=peft, rank=rank, sparsity=sparsity, seq_len=seq_len)
    L, T, d, r = dims.num_blocks, seq_len, dims.d_model, rank
    d_q = dims.num_heads * (d // dims.num_heads)  # = d except Table A.7's RoBERTa (512 / 12)
    if peft == "lora":
        # 2Td^2 output projection; 12Tdr LoRA A side; 6Td d_q frozen QKV; 5T^2d attention
        # core; T^2d/8 a constant of unknown origin (the note); 6Tdr LoRA B side.
        fixed = 2 * T * d * d + 12 * T * d * r
        pruned = 6 * T * d * d_q + 5 * T * T * d + T * T * d / 8 + 6 * T * d * r
        total = L * (fixed + keep * pruned)
    elif peft == "full":
        total = L * (3 * T * d * d + keep * (9 * T * d * d + 5 * T * T * d))
    elif peft == "ia3":
        total = L * (2 * T * d * d + keep * (9 * T * d * d + 5 * T * T * d + 9 * T * d))
    else:  # prompt tuning / P-tuning: Tp virtual tokens inside the T, N real ones (the note)
        Tp = num_virtual_tokens
        if T <= Tp:
            raise ValueError(f"seq_len must exceed the {Tp} virtual tokens, got {seq_len}")
        N = T - Tp
        if peft == "prefix":  # P-tuning v2: virtual tokens at every layer
            pruned = 3 * N * d * d + 9 * Tp * d * d + 5 * N * N * d
            total = L * (2 * N * d * d + 2 * Tp * d * d + keep * pruned)
        else:  # prompt tuning: virtual tokens at the input only, counted once, not per block
            per_block = 2 * N * d * d + keep * (3 * N * d * d + 5 * N * N * d)
            total = L * per_block + 3 * Tp * d * d + keep * 6 * Tp * d * d
    if extra_unpruned_td2:
        total += L * T * d * d
    return float(total)


def ops_per_client_round(
    dims: AttentionDims, *, num_samples: int, num_epochs: int, **ops_kwargs: Any
) -> float:
    """The analytic OPs of one client's local training in a round: per-sequence OPs x
    samples x epochs (the figure recorded beside the measured seconds)."""
    if not isinstance(num_samples, numbers.Integral) or num_samples < 0:
        raise ValueError(f"num_samples must be an integer >= 0, got {num_samples!r}")
    if not isinstance(num_epochs, numbers.Integral) or num_epochs < 0:
        raise ValueError(f"num_epochs must be an integer >= 0, got {num_epochs!r}")
    return ops_per_sequence(dims, **ops_kwargs) * num_samples * num_epochs


# -------------------------------------------------------------------- communication
def lora_qkv_elements_paper(dims: AttentionDims, rank: int = 16) -> tuple[int, int]:
    """(A elements, B elements) of LoRA on q, k, v of every attention module, paper style.

    A = B = n_attn * 3 * r * d (the note, "Communication"; method-spec "LoRA placement").
    ``dims`` must describe the real model (BART-base: 18 modules, d = 768), not Table
    A.7's OPs row. A is never split by head; B's rows are.
    """
    _check(rank=rank)
    n = dims.num_blocks * 3 * rank * dims.d_model
    return n, n


def lora_upload_bytes_paper(
    num_adapter_elements: int, num_head_elements: int, sparsity: float
) -> int | float:
    """fp32 bytes a client uploads: 4 * (non-head elements + keep * head elements).

    The paper's convention (the note): every non-head adapter element (all of LoRA's A)
    is sent, only the kept heads' share of B is, and no task head is counted.
    """
    keep = _check(sparsity=sparsity)
    if num_adapter_elements < 0 or num_head_elements < 0:
        raise ValueError("num_adapter_elements and num_head_elements must be >= 0")
    nbytes = BYTES_PER_ELEMENT * (num_adapter_elements + keep * num_head_elements)
    return int(nbytes) if float(nbytes).is_integer() else nbytes


def ia3_upload_bytes_paper(dims: AttentionDims, sparsity: float = 0.0) -> int | float:
    """fp32 bytes of peft's default IA3 vectors on T5 (k and v of every attention module,
    the FFN's wo input), all scaled by keep: 4 * keep * (n_attn*2*d + n_ffn*d_ff).
    Gives Table 3's 168 KiB on T5-small and 84 KiB at 50% (the note)."""
    keep = _check(sparsity=sparsity)
    if dims.d_ff is None or dims.num_ffn is None:
        raise ValueError("dims.d_ff and dims.num_ffn are needed for IA3's upload size")
    num_elements = dims.num_blocks * 2 * dims.d_model + dims.num_ffn * dims.d_ff
    nbytes = BYTES_PER_ELEMENT * keep * num_elements
    return int(nbytes) if float(nbytes).is_integer() else nbytes


# ------------------------------------------------------------------------- formatting
def _round_half_up(x: float, decimals: int) -> str:
    # Decimal(repr(x)) reads the number as printed, so 10.125 -> 10.13 (not banker's or
    # binary-artefact rounding), as the paper's tables do (the note, "Conventions").
    step = Decimal(1).scaleb(-decimals)
    return str(Decimal(repr(float(x))).quantize(step, rounding=ROUND_HALF_UP))


def format_bytes_paper(nbytes: float, unit: str | None = None, decimals: int = 2) -> str:
    """'3.38 MiB' style: MiB = 2**20, KiB = 2**10, rounded half-up. ``unit`` None picks
    the largest unit the value reaches (the paper also prints 0.93 MB: pass unit='MiB')."""
    if unit is None:
        unit = next(u for u, size in _UNITS.items() if nbytes >= size or u == "B")
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {tuple(_UNITS)}, got {unit!r}")
    return f"{_round_half_up(nbytes / _UNITS[unit], decimals)} {unit}"


def format_ops(ops: float, decimals: int = 2) -> str:
    """'33.07 G' style, G = 1e9, rounded half-up like :func:`format_bytes_paper`."""
    return f"{_round_half_up(ops / 1e9, decimals)} G"


if __name__ == "__main__":  # python -m fedmpi.accounting: Table 3 from the PEFT methods' head maps
    from fedmpi.peft_costs import main

    raise SystemExit(main())
