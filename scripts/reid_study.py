"""Re-evaluate the re-id study's committed heads on freshly rendered videos.

The study (``docs/experiments.md``, "The re-id study") trained only the re-id head of a frozen
segmenter, once per contrastive recipe and training seed; ``results/reid_study/`` holds that
segmenter (``segmenter/``), the 60 heads (``heads.safetensors``) and the study's own results.
This script renders ``ctvis synth --preset reid --seed S`` videos 0..N-1 in memory (nothing
cached), runs the frozen segmenter once per video, scores every head through the shipped
tracker with the box cue off, and prints per recipe the mean IDF1 / AssA over the training
seeds with 95 % intervals (Student-t over the seeds; and a bootstrap over seeds and videos),
and the paired IDF1 difference of each recipe minus the single-reference baseline.

Usage::

    python scripts/reid_study.py --eval-seed 7 --videos 200 --out reid.json [--jobs 2]

About 5-8 minutes for 200 videos on 2 cores (the segmenter is most of it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STUDY = ROOT / "results" / "reid_study"
BASELINE = "single_ref"
# the recipe the CTVIS-trained demo uses: of `paper` and `official`, the one with the higher
# mean IDF1 on the study's fresh set (seed 20261207), as declared before that set was scored
CTVIS = "official"


def _table(summary: dict) -> str:
    """Markdown table of the summary, in percent."""
    lines = [
        "| recipe | IDF1 (t over seeds) | IDF1 boot | AssA (t over seeds) | "
        "IDF1 - baseline (t over seeds) | diff boot |",
        "|---|---|---|---|---|---|",
    ]
    paired = summary["paired_vs_baseline"]
    for name, v in summary["variants"].items():
        cells = [
            f"{100 * v['idf1']:.2f} [{100 * v['idf1_ci'][0]:.2f}, {100 * v['idf1_ci'][1]:.2f}]",
            f"[{100 * v['idf1_ci_boot'][0]:.2f}, {100 * v['idf1_ci_boot'][1]:.2f}]",
            f"{100 * v['assa']:.2f} [{100 * v['assa_ci'][0]:.2f}, {100 * v['assa_ci'][1]:.2f}]",
        ]
        if name in paired:
            p = paired[name]
            cells.append(
                f"{100 * p['idf1_diff']:+.2f} [{100 * p['idf1_diff_ci'][0]:+.2f}, "
                f"{100 * p['idf1_diff_ci'][1]:+.2f}]"
            )
            cells.append(
                f"[{100 * p['idf1_diff_ci_boot'][0]:+.2f}, {100 * p['idf1_diff_ci_boot'][1]:+.2f}]"
            )
        else:
            cells += ["(baseline)" if name == summary["baseline"] else "(not paired)", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, score the heads, write the JSON and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eval-seed", type=int, required=True, help="ctvis synth --seed")
    parser.add_argument("--videos", type=int, default=200, help="videos 0..N-1 of that seed")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--heads", type=Path, default=STUDY / "heads.safetensors")
    parser.add_argument("--segmenter", type=Path, default=STUDY / "segmenter")
    parser.add_argument("--replicates", type=int, default=2000, help="bootstrap replicates")
    args = parser.parse_args(argv)
    if args.videos < 2:
        parser.error("--videos must be at least 2")

    from training.reid_study.report import count_videos, summarize

    tic = time.perf_counter()
    counts = count_videos(args.segmenter, args.heads, args.eval_seed, args.videos, args.jobs)
    extra = {"eval_seed": args.eval_seed, "seconds": round(time.perf_counter() - tic, 1)}
    summary = summarize(counts, BASELINE, CTVIS, args.replicates, extra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"reid preset seed {args.eval_seed}, {args.videos} videos, "
          f"{summary['variants'][BASELINE]['seeds']} training seeds per recipe, "
          f"{extra['seconds']:.0f} s\n")  # fmt: skip
    print(_table(summary))
    p = summary["paired_idf1_diff_ci"]
    print(f"\nCTVIS ({CTVIS}) - baseline ({BASELINE}) IDF1: "
          f"{100 * summary['paired_idf1_diff']:+.2f} points, 95 % CI over seeds "
          f"[{100 * p[0]:+.2f}, {100 * p[1]:+.2f}]")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
