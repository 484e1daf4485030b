"""``ctvis evaluate``: score a YouTube-VIS results JSON against ground truth.

Prints a table of AP/AR (in percent, as CTVIS does) plus identity switches and per-category AP,
or with ``--json`` one JSON object whose metrics are fractions in [0, 1] (-1 for an empty
area bucket). Semantics: ``training/ytvis_eval.py``.

Results whose label space is not the ground truth's (category ids it does not list, or, where
entries give a ``category_name`` as ``ctvis track`` writes it, other names for its ids) give
meaningless numbers (AP near 0, or other classes compared) without any error; that is warned
about in one line on stderr, and ``--strict`` refuses to evaluate them (exit 1). The numbers
themselves never change.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``evaluate`` options."""
    parser.add_argument("--gt", required=True, help="ground truth, YouTube-VIS instances JSON")
    parser.add_argument("--results", required=True, help="results JSON (list of per-track entries)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (fractions, -1 for empty buckets) instead of a table",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 1) when the results' categories are not the ground truth's "
        "(unknown category ids, or other category names); default: warn and evaluate",
    )


def format_table(metrics: dict[str, Any], per_category: dict[str, float]) -> str:
    """Human-readable summary: metrics x100, ``-`` for empty buckets, then per-category AP."""

    def pct(value: float) -> str:
        return "-" if value < 0 else f"{100 * value:.2f}"

    keys = [k for k in metrics if k not in ("IDSW", "per_category_AP")]
    width = max(len(k) for k in keys)
    lines = [f"{k:<{width}}  {pct(metrics[k]):>7}" for k in keys]
    lines.append(f"{'IDSW':<{width}}  {metrics['IDSW']:>7d}")
    present = {name: ap for name, ap in per_category.items() if ap >= 0}
    if present:
        name_width = max(len(n) for n in present)
        lines += ["", "per-category AP (categories with ground truth):"]
        lines += [f"  {name:<{name_width}}  {pct(ap):>7}" for name, ap in present.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print; exit 1 with a message on a missing or malformed file, or (with
    ``--strict``) on results whose label space is not the ground truth's."""
    from training.label_space import label_space_mismatch
    from training.ytvis_eval import evaluate
    from training.ytvis_json import YtvisFormatError, load_ground_truth, load_results

    start = time.perf_counter()
    try:
        gt = load_ground_truth(args.gt)
        results = load_results(args.results, gt)
    except YtvisFormatError as exc:
        print(f"ctvis evaluate: {exc}", file=sys.stderr)
        return 1
    mismatch = label_space_mismatch(gt, results)
    if mismatch is not None:
        if args.strict:
            print(f"ctvis evaluate: refused (--strict): {mismatch.message()}", file=sys.stderr)
            return 1
        print(f"ctvis evaluate: warning: {mismatch.message()}", file=sys.stderr)
    result = evaluate(gt, results)
    elapsed = time.perf_counter() - start
    summary = result.to_dict()
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_table(summary, result.per_category_ap))
        print(f"\nevaluated in {elapsed:.2f}s", file=sys.stderr)
    return 0
