"""What a Snakemake job pays before it works: the seconds a fresh Python takes to import each stage
module of the workflow (every rule's `script:` runs in a new process that imports its stage), next to
`import torch`, the floor every torch stage pays, and an empty interpreter. Rounds interleave the
imports so that a busy neighbour slows each alike; the table gives the median (min-max) and which of
the heavy libraries the import loaded.

    .venv/bin/python benchmarks/bench_startup.py              # 5 rounds, about a minute on 2 cores
    .venv/bin/python benchmarks/bench_startup.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "scipy", "sklearn", "matplotlib", "pandas")


def imports() -> dict[str, str]:
    """{label: statement}: the empty interpreter, torch, then each stage module."""
    stages = sorted(p.stem for p in (REPO / "src/tracinflow/stages").glob("*.py"))
    chosen = {"(empty interpreter)": "pass", "import torch": "import torch"}
    chosen.update({f"stages.{s}": f"import tracinflow.stages.{s}" for s in stages if s[0] != "_"})
    return chosen


def timed(statement: str) -> tuple[float, list[str]]:
    """Wall seconds of a fresh interpreter running ``statement``, and the heavy libraries loaded."""
    report = f"import sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", f"{statement}\n{report}"], capture_output=True, text=True, check=True
    ).stdout
    return time.perf_counter() - start, [m for m in out.strip().split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    chosen = imports()
    seconds: dict[str, list[float]] = {label: [] for label in chosen}
    loaded: dict[str, list[str]] = {}
    timed("import torch")  # warm the page cache, so the first row does not pay for it
    for _ in range(args.rounds):
        for label, statement in chosen.items():
            took, loaded[label] = timed(statement)
            seconds[label].append(took)
    floor = statistics.median(seconds["import torch"])
    print(f"Python {sys.version.split()[0]}, {args.rounds} interleaved rounds (median, min-max)\n")
    print("| import | seconds | minus `import torch` | heavy libraries it loads |")
    print("| --- | ---: | ---: | --- |")
    for label, values in seconds.items():
        median = statistics.median(values)
        extra = f"{median - floor:+.2f}" if "torch" in loaded[label] else ""
        print(
            f"| {label} | {median:.2f} ({min(values):.2f}-{max(values):.2f}) | {extra} "
            f"| {', '.join(loaded[label]) or '-'} |"
        )


if __name__ == "__main__":
    main()
