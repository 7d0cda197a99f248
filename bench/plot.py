"""Plot build time and answer latency against corpus size into docs/performance.png.

Reads bench/results/build.json, written by bench/build.py (which builds 100/500/1000/all BBC articles and
asks questions of each index); run that first, or pass --run to have this script run it.

    .venv/bin/python bench/plot.py            # from the saved results
    .venv/bin/python bench/plot.py --run      # run bench/build.py first (several minutes)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "build.json"
OUTPUT = ROOT / "docs" / "performance.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="run bench/build.py first")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args()
    if args.run:
        subprocess.run([sys.executable, str(ROOT / "bench" / "build.py"), "--output", args.results], check=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(args.results).read_text())
    styles = {"torch": ("o-", "PyTorch"), "onnx": ("s--", "ONNX Runtime int8")}
    figure, (build_axis, answer_axis) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for backend, runs in results.items():
        rows = sorted(runs.values(), key=lambda r: r["articles"])
        sizes = [r["articles"] for r in rows]
        style, label = styles.get(backend, ("^-", backend))
        build_axis.plot(sizes, [r["build_seconds"] for r in rows], style, label=f"build ({label})")
        build_axis.plot(sizes, [r["chunks"] / r["raw_rate"] for r in rows], style, alpha=0.35,
                        label=f"bare model on the same chunks ({label})")
        answer_axis.plot(sizes, [r["answer_p50_ms"] for r in rows], style, label=f"answer() p50 ({label})")
        answer_axis.plot(sizes, [r["answer_p95_ms"] for r in rows], style, alpha=0.35, label=f"answer() p95 ({label})")
        answer_axis.plot(sizes, [r["encode_p50_ms"] for r in rows], ":", color="grey",
                         label=f"bare query encoding p50 ({label})")
        for axis in (build_axis, answer_axis):
            axis.set_xticks(sizes)
    build_axis.set(title="Full index build (model loaded)", xlabel="articles (BBC News)", ylabel="seconds")
    answer_axis.set(title="Answer latency", xlabel="articles (BBC News)", ylabel="milliseconds")
    answer_axis.set_ylim(bottom=0)
    build_axis.set_ylim(bottom=0)
    for axis in (build_axis, answer_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("qa on a 2-core machine", fontsize=10)
    figure.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
