"""The paper's Table 3 from code: each PEFT method's upload (dense and pruned) and OPs on a real config.

The model is built from its real config on the meta device (no weights, no download) and
wrapped by the method exactly as a run would; its ``GroupMap`` then says which trainable
elements heads own. Upload, in fp32 bytes, of one client-round: dense = every trainable
element but the task head; pruned = the elements no head owns plus ``keep`` (= 1 - sparsity,
the paper's convention: not rounded to whole heads) of the head-owned ones. OPs follow
``accounting.ops_per_sequence`` (the note's decoded rules). The paper's printed figures
are shown beside; ``accounting.md`` "Communication" says which of them no count of
parameters reproduces.

Run: ``python -m fedmpi.accounting --model t5-small --peft ia3`` (or ``--peft all``,
``--sparsity 0.8``, ``--rank 8``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import AutoModelForSeq2SeqLM, BartConfig, PretrainedConfig, T5Config

from fedmpi import accounting
from fedmpi.models.params import TrainableLayout
from fedmpi.peft_methods import Full, Ia3, Lora, Prefix, Prompt
from fedmpi.peft_methods.base import PeftMethod

# Real configs (the Hugging Face hub's), written out so nothing is downloaded.
PAPER_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "t5-small": lambda: T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
    "t5-base": lambda: T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
    "bart-base": lambda: BartConfig(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
                                    encoder_attention_heads=12, decoder_attention_heads=12,
                                    encoder_ffn_dim=3072, decoder_ffn_dim=3072),
}  # fmt: skip
TABLE3_SPARSITY = {"ia3": 0.5}  # the paper prunes IA3 at 50%, every other method at 90%
DEFAULT_SPARSITY = 0.9

# Table 3 as printed (T5-small): dense and pruned upload, and whether a count of parameters
# reproduces them (accounting.md "Communication"). The paper writes MB/KB for all of them.
PAPER_TABLE3_UPLOAD: dict[str, tuple[str, str, float, str]] = {
    "lora-r16": ("3.375 MB", "1.856 MB", 1.856 / 3.375, "reproduced (MiB)"),
    "lora-r8": ("1.6875 MB", "0.928 MB", 0.928 / 1.6875, "reproduced (MiB)"),
    "lora-r4": ("0.844 MB", "0.464 MB", 0.464 / 0.844, "reproduced (MiB)"),
    "ia3": ("168 KB", "84 KB", 0.5, "reproduced (KiB); its 84 scales the FFN vector too, see the line below"),
    "full": ("41.96 MB", "23.08 MB", 23.08 / 41.96, "not reproducible from first principles"),
    "prompt": ("743 KB", "74 KB", 74 / 743, "not reproducible from first principles"),
    "prefix": ("1.80 MB", "0.18 MB", 0.18 / 1.80, "not reproducible from first principles"),
}
NOTES = {
    "full": "our count: every weight of the real model (embeddings, FFN, norms never head-owned)",
    "prefix": "our count includes peft's cross-attention slots, which transformers 5 never reads (prefix.py)",
}


@dataclass(frozen=True)
class UploadFigures:
    """One method's upload on one model, counted from its GroupMap."""

    label: str  # "lora-r16", "ia3", ...
    method: str  # peft.method
    sparsity: float
    num_adapter_elements: int  # trainable, not the task head
    num_head_elements: int  # of those, owned by some head

    @property
    def dense_bytes(self) -> int:
        return accounting.BYTES_PER_ELEMENT * self.num_adapter_elements

    @property
    def pruned_bytes(self) -> float:
        always = self.num_adapter_elements - self.num_head_elements
        return accounting.lora_upload_bytes_paper(always, self.num_head_elements, self.sparsity)

    @property
    def ratio(self) -> float:
        return self.pruned_bytes / self.dense_bytes

    @property
    def paper_convention_bytes(self) -> float:
        """IA3 as the paper counts it: every vector scaled by keep (the FFN one too)."""
        return self.dense_bytes * (1.0 - self.sparsity)


def upload_figures(config: PretrainedConfig, method: PeftMethod, label: str, sparsity: float) -> UploadFigures:
    """Build ``config`` on the meta device, wrap it with ``method``, count its elements by owner."""
    with torch.device("meta"):
        backbone = AutoModelForSeq2SeqLM.from_config(config)
        model = method.wrap(backbone, kind="generation", task_head=None, seed=0)
    layout = TrainableLayout.from_model(model)
    groups = method.head_groups(model, layout)
    adapter = ~layout.element_task_head_mask()
    return UploadFigures(
        label=label, method=method.name, sparsity=sparsity, num_adapter_elements=int(adapter.sum()),
        num_head_elements=int(((groups.group_index >= 0) & adapter).sum()),
    )  # fmt: skip


def table3_methods(peft: str, rank: int | None, num_virtual_tokens: int) -> list[tuple[str, PeftMethod]]:
    """(label, method) rows for ``--peft``: one method, or ``all`` (LoRA at ranks 16, 8, 4)."""
    ranks = (rank,) if rank else (16, 8, 4)
    rows: dict[str, list[tuple[str, PeftMethod]]] = {
        "lora": [(f"lora-r{r}", Lora(rank=r)) for r in ranks],
        "full": [("full", Full())],
        "ia3": [("ia3", Ia3())],
        "prompt": [("prompt", Prompt(num_virtual_tokens=num_virtual_tokens))],
        "prefix": [("prefix", Prefix(num_virtual_tokens=num_virtual_tokens))],
    }
    if peft == "all":
        return [row for name in ("lora", "full", "ia3", "prompt", "prefix") for row in rows[name]]
    if peft not in rows:
        raise ValueError(f"--peft must be one of {sorted(rows)} or all, got {peft!r}")
    return rows[peft]


def _ops(config: PretrainedConfig, fig: UploadFigures, rank: int, num_virtual_tokens: int) -> tuple[str, str]:
    dims = accounting.attention_dims(config)
    kwargs = dict(peft=fig.method, rank=rank, num_virtual_tokens=num_virtual_tokens)
    dense = accounting.ops_per_sequence(dims, sparsity=0.0, **kwargs)
    pruned = accounting.ops_per_sequence(dims, sparsity=fig.sparsity, **kwargs)
    return accounting.format_ops(dense), accounting.format_ops(pruned)


def _size(nbytes: float, unit: str) -> str:
    return accounting.format_bytes_paper(nbytes, unit, decimals=3)


def report(model: str, peft: str, *, sparsity: float | None = None, rank: int | None = None,
           num_virtual_tokens: int = accounting.NUM_VIRTUAL_TOKENS) -> str:  # fmt: skip
    """The Table 3 lines for ``model`` and ``peft`` (a method name or ``all``), as printed by the CLI."""
    if model not in PAPER_CONFIGS:
        raise ValueError(f"--model must be one of {sorted(PAPER_CONFIGS)}, got {model!r}")
    config = PAPER_CONFIGS[model]()
    lines = [f"{model}: upload per client-round (fp32; dense -> pruned, ratio) and OPs per 512-token sequence",
             f"{'row':<9} {'sparsity':>8} {'dense':>14} {'pruned':>14} {'ratio':>6} {'OPs dense':>10} "
             f"{'OPs pruned':>10}  paper (Table 3)"]  # fmt: skip
    for label, method in table3_methods(peft, rank, num_virtual_tokens):
        s = TABLE3_SPARSITY.get(method.name, DEFAULT_SPARSITY) if sparsity is None else sparsity
        fig = upload_figures(config, method, label, s)
        ops_dense, ops_pruned = _ops(config, fig, getattr(method, "rank", 16), num_virtual_tokens)
        unit = "KiB" if fig.dense_bytes < 2**19 else "MiB"
        paper = ""
        if model == "t5-small" and label in PAPER_TABLE3_UPLOAD and sparsity is None:
            d, p, ratio, note = PAPER_TABLE3_UPLOAD[label]
            paper = f"{d} -> {p} ({ratio:.2f}): {note}"
        lines.append(f"{label:<9} {s:>8.2f} {_size(fig.dense_bytes, unit):>14} {_size(fig.pruned_bytes, unit):>14} "
                     f"{fig.ratio:>6.3f} {ops_dense:>10} {ops_pruned:>10}  {paper}")  # fmt: skip
        if method.name == "ia3":
            lines.append(f"{'':<9} {'':>8} {'':>14} {_size(fig.paper_convention_bytes, unit):>14} "
                         f"{1 - s:>6.3f}  IA3 the paper's way: the FFN vector (no head) scaled by keep too")  # fmt: skip
        if method.name in NOTES:
            lines.append(f"{'':<9} note: {NOTES[method.name]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedmpi.accounting", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="t5-small", choices=sorted(PAPER_CONFIGS))
    parser.add_argument("--peft", default="all", help="lora | ia3 | prefix | prompt | full | all")
    parser.add_argument("--sparsity", type=float, default=None, help="default: Table 3's (IA3 0.5, others 0.9)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default: 16, 8 and 4)")
    parser.add_argument("--num-virtual-tokens", type=int, default=accounting.NUM_VIRTUAL_TOKENS)
    args = parser.parse_args(argv)
    try:
        print(report(args.model, args.peft, sparsity=args.sparsity, rank=args.rank,
                     num_virtual_tokens=args.num_virtual_tokens))  # fmt: skip
    except ValueError as error:
        parser.error(str(error))
    return 0
