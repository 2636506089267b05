"""Where `make demo`'s time goes, from Snakemake's benchmark files, and a no-op rerun timed.

    .venv/bin/python benchmarks/bench_demo.py      # after `make demo`

Reads results/benchmarks/<rule>/*.tsv of the demo config's versions (and the dataset jobs) and the
newest Snakemake log that ran them, and prints one table: per rule the jobs, their total and
largest wall time and peak RSS, the run's wall time from its log; then times `snakemake -n` and a
real no-op rerun of the demo (nothing to do, so this is the workflow's own overhead).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]", re.MULTILINE)


def jobs(config: dict) -> pd.DataFrame:
    """One row per benchmark file of the config's versions or its dataset: rule, seconds, RSS."""
    versions = set(config["versions"])
    dataset = config["dataset"]["name"]
    rows = []
    for rule_dir in sorted((REPO / "results/benchmarks").iterdir()):
        files = rule_dir.glob("*.tsv") if rule_dir.is_dir() else [rule_dir]
        for path in files:
            # <version>_<ckpt>_<split> (evaluation factors), <version>_<split> (extract_factors),
            # <version>_t<tile> (shards), <version>
            owner = re.sub(r"_(train|val|test)$", "", path.stem.split("_epoch_")[0])
            owner = owner.rsplit("_t", 1)[0] if owner not in versions else owner
            if not (owner in versions or path.stem.startswith(dataset) or rule_dir.is_file()):
                continue
            bench = pd.read_csv(path, sep="\t").iloc[0]
            rows.append(
                {"rule": rule_dir.stem, "s": float(bench["s"]), "rss": float(bench["max_rss"])}
            )
    return pd.DataFrame(rows, columns=["rule", "s", "rss"])


def last_run_wall() -> tuple[str, float] | None:
    """(log name, wall seconds) of the newest Snakemake log that ran jobs."""
    for log in sorted((REPO / ".snakemake/log").glob("*.snakemake.log"), reverse=True):
        text = log.read_text(errors="replace")
        stamps = STAMP.findall(text)
        if len(stamps) >= 2 and "Finished job" in text:
            first, last = (
                datetime.strptime(s, "%a %b %d %H:%M:%S %Y") for s in (stamps[0], stamps[-1])
            )
            return log.name, (last - first).total_seconds()
    return None


def timed(args: list[str], quick_scontrol: bool = False) -> float:
    """Wall seconds of a command in the repository. With ``quick_scontrol``, an ``scontrol`` that
    fails at once comes first on PATH: Snakemake's SLURM plugin runs ``scontrol show config`` at
    start-up, which waits 10 s where SLURM is installed but its controller is down."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if quick_scontrol:
            fake = Path(tmp) / "scontrol"
            fake.write_text("#!/bin/sh\nexit 1\n")
            fake.chmod(0o755)
            env["PATH"] = f"{tmp}:{env['PATH']}"
        t0 = time.perf_counter()
        subprocess.run(args, cwd=REPO, check=True, capture_output=True, text=True, env=env)
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / args.config).read_text())
    table = jobs(config)
    if table.empty:
        raise SystemExit("no benchmark files of the demo's versions: run `make demo` first")
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    dry = timed([snakemake, "-n", "--configfile", args.config])
    noop = timed([snakemake, "--cores", "2", "--configfile", args.config])
    noop_quick = timed([snakemake, "--cores", "2", "--configfile", args.config], True)
    per_rule = table.groupby("rule").agg(jobs=("s", "size"), total=("s", "sum"), longest=("s", "max"),
                                         rss=("rss", "max"))  # fmt: skip
    total = per_rule["total"].sum()
    print("\n### bench_demo (the last `make demo`, from its benchmark files)\n")
    print("| rule | jobs | total s | share | longest job s | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for rule, row in per_rule.sort_values("total", ascending=False).iterrows():
        print(f"| {rule} | {int(row['jobs'])} | {row['total']:.0f} | {row['total'] / total:.0%} | "
              f"{row['longest']:.1f} | {row['rss']:,.0f} |")  # fmt: skip
    print(f"| **all benchmarked jobs** | {int(per_rule['jobs'].sum())} | {total:.0f} | | | |")
    run = last_run_wall()
    if run is not None:
        print(f"\nWall time of the last run ({run[0]}): {run[1] / 60:.1f} min for {total / 60:.1f} "
              "min of benchmarked job time (2 cores: jobs run side by side).")  # fmt: skip
    print(f"\n`snakemake -n` (plan only): {dry:.1f} s; no-op rerun (`snakemake --cores 2`, "
          f"nothing to do): {noop:.1f} s; the same with `scontrol` answering at once (a machine "
          f"without SLURM, or a cluster whose controller is up): {noop_quick:.1f} s.")  # fmt: skip


if __name__ == "__main__":
    main()
