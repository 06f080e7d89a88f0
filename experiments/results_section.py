"""Write the README's ablation results section from the result files of experiments/ablation.py.

    python experiments/results_section.py [--output-dir results/ablation] [--tasks 20news sick] [--last-k 5] \
        [--readme README.md] [--block NAME]

It prints the markdown; with ``--readme`` it replaces the text between the markers
``<!-- ablation-results:begin -->`` and ``<!-- ablation-results:end -->`` in that file (with
``--block NAME``, ``<!-- ablation-results:NAME:begin -->`` ... ``:end -->``: one block per output
folder, i.e. per protocol), so the section is always what the files say, including which claims
hold and which do not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ablation import CELL_HEADER, DIFF_HEADER, REPO, collect, tables


def markers(block: str | None) -> tuple[str, str]:
    """The README comments around a generated block: the default one, or the block named ``block``."""
    tag = "ablation-results" if block is None else f"ablation-results:{block}"
    return f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _with_verdict(diffs: Sequence[Sequence[str]], *verdicts: str) -> list[str]:
    """The differences (named with their selection rule) whose last-k verdict starts with one of ``verdicts``."""
    return [f"{d[0]} ({d[1]})" for d in diffs if d[-1].startswith(verdicts)]


def section(output_dir: Path, tasks: Sequence[str], last_k: int) -> str:
    parts = []
    for task in tasks:
        rows = collect(output_dir / task, last_k)
        if not rows:
            parts.append(f"**{task}**: no complete runs in `{output_dir / task}`.\n")
            continue
        cells, diffs = tables(rows, last_k)
        seeds = sorted({r["seed"] for r in rows})
        parts.append(f"**{task}** (seeds {', '.join(map(str, seeds))}; accuracy %, mean ± sd; last-k = mean of the "
                     f"last {last_k} evaluations)\n\n{markdown_table(CELL_HEADER, cells)}\n")
        parts.append(f"Paired differences (same seed and selection rule), accuracy points, 95% t intervals:\n\n"
                     f"{markdown_table(DIFF_HEADER, diffs)}\n")
        holds, reversed_ = _with_verdict(diffs, "holds"), _with_verdict(diffs, "reversed")
        unclear = _with_verdict(diffs, "not shown", "too few")
        parts.append("What holds on this task (last-k accuracy): "
                     + (f"positive: {', '.join(holds)}. " if holds else "no difference is positive beyond its CI. ")
                     + (f"Negative: {', '.join(reversed_)}. " if reversed_ else "")
                     + (f"Not shown either way: {', '.join(unclear)}." if unclear else "") + "\n")
    return "\n".join(parts)


def replace_between_markers(text: str, body: str, block: str | None = None) -> str:
    begin, end = markers(block)
    if begin not in text or end not in text:
        raise ValueError(f"the README has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "results" / "ablation")
    parser.add_argument("--tasks", nargs="+", default=["20news", "sick"])
    parser.add_argument("--last-k", type=int, default=5)
    parser.add_argument("--readme", type=Path)
    parser.add_argument("--block", help="the named block of the README to replace (default: the unnamed one)")
    args = parser.parse_args(argv)
    body = section(args.output_dir, args.tasks, args.last_k)
    print(body)
    if args.readme:
        args.readme.write_text(replace_between_markers(args.readme.read_text(), body, args.block))
        print(f"updated {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
