"""Running the real workflow in a scratch working directory, and reading what a dry run plans."""

from __future__ import annotations

import contextlib
import copy
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml
from conftest import REPO

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake_command(workdir: Path, *args) -> tuple[list[str], dict]:
    """The command line and environment of a snakemake run in ``workdir``."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return [
        SNAKEMAKE,
        "--snakefile",
        str(REPO / "workflow/Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ], env


def run_snakemake(workdir: Path, *args, check=True):
    command, env = snakemake_command(workdir, *args)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def start_snakemake(workdir: Path, *args) -> subprocess.Popen:
    """A snakemake run in ``workdir`` started in the background; its output goes to a log file
    beside (not in) the tree."""
    command, env = snakemake_command(workdir, *args)
    log = open(workdir.parent / f"{workdir.name}-snakemake.log", "w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)


def wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 300.0):
    """Poll ``condition`` until it returns something true, and return that; fail (killing the
    process) if the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            raise AssertionError(f"the process exited ({process.returncode}) before {what}")
        time.sleep(0.01)
    process.kill()
    raise AssertionError(f"timed out waiting for {what}")


def job_processes(run: subprocess.Popen, rule: str) -> list[psutil.Process]:
    """The running jobs of ``rule`` under a snakemake process: each rule's `script:` runs as a
    python process of ``.snakemake/scripts/tmp<random>.<rule>.py``."""
    found = []
    for child in psutil.Process(run.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if any(part.endswith(f".{rule}.py") for part in child.cmdline()):
                found.append(child)
    return found


def write_config(workdir: Path, config: dict, name: str = "config.yaml") -> Path:
    path = workdir / "config" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def planned_jobs(output: str) -> dict:
    """The 'Job stats' table of a run or dry run as {rule: count}."""
    table = output.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def planned_job_blocks(output: str) -> list[dict]:
    """Each job a dry run lists, as {"rule": name, "<field>": value} from its indented lines
    (input, output, wildcards, resources, ...)."""
    jobs = []
    for line in output.splitlines():
        started = re.match(r"^(?:local)?rule (\w+):$", line)
        if started:
            jobs.append({"rule": started[1]})
        elif jobs and (field := re.match(r"^    (\w+): (.*)$", line)):
            jobs[-1][field[1]] = field[2]
    return jobs


def planned_versions(output: str) -> set[str]:
    """The {version} wildcard values of the jobs a dry run plans."""
    found = set()
    for job in planned_job_blocks(output):
        match = re.search(r"\bversion=([^,\s]+)", job.get("wildcards", ""))
        if match:
            found.add(match[1])
    return found


def resources_of(job: dict) -> dict:
    """A planned job's ``resources:`` line as {name: value-string}."""
    pairs = (item.split("=", 1) for item in job.get("resources", "").split(", ") if "=" in item)
    return dict(pairs)


def tiny_config() -> dict:
    """Three versions of a model small enough to train in seconds on scikit-learn's digits: v1 plain;
    v2 hooks the whole head, uses another seed and an uneven shard grid, and has a quarter of its
    training labels flipped; v3 trains on v2's training set minus its top 4 suspects."""
    return {
        "dataset": {"name": "digits", "root": "results/datasets/digits",
                    "demo": {"source": "digits", "images_per_class": 12}, "image_size": 16},
        "model": {"arch": "small_resnet", "pretrained": None, "width": 4,
                  "head": {"hidden": [16, 8]}},
        "training": {
            "batch_size": 32,
            "stage1": {"epochs": 1},
            "stage2": {"max_epochs": 3, "lr_backbone": 1e-3, "lr_head": 1e-3,
                       "checkpoint_epochs": [2, 3], "patience": 1, "train_batchnorm": True},
        },
        # TracIn, which test_workflow_train checks against autograd (test_workflow_curvature and
        # the study's tiny config run the default, K-FAC on the head)
        "influence": {"top_k": 5, "shards": {"test": 2, "train": 2}, "method": "tracin",
                      "layers": ["fc.4"]},
        "reports": {"galleries": {"mispredictions": 3, "suspects": 6, "thumbnail_px": 48}},
        "versions": {
            "v1": {},
            "v2": {"seed": 1, "influence": {"layers": "head", "shards": {"train": 3}},
                   "label_noise": {"rate": 0.25, "seed": 3}},
            "v3": {"clean": {"from": "v2", "count": 4, "ranking": "self_influence"}},
        },
    }  # fmt: skip


def tiny_study_config() -> dict:
    """A noise study small enough for CI: the pretrained EfficientNet-Lite0 on scikit-learn's
    digits at 32 px, two seeds of 30% confusing noise, cleaned by the default ranking (aum), the loss,
    cleanlab, random and oracle removal (and relabelled by the default), with 2-fold cleanlab."""
    return {
        "dataset": {"name": "digits", "root": "results/datasets/digits",
                    "demo": {"source": "digits", "images_per_class": 16}, "image_size": 32},
        "split": {"train": 0.5, "val": 0.2, "test": 0.3},
        "model": {"arch": "efficientnet_lite0", "pretrained": "imagenet"},
        "training": {
            "batch_size": 32,
            "stage1": {"epochs": 3, "lr": 3e-3},
            "stage2": {"max_epochs": 2, "lr_backbone": 1e-4, "lr_head": 1e-3,
                       "checkpoint_epochs": [1, 2], "patience": None},
        },
        "rankings": {"cleanlab_folds": 2},
        "study": {
            "seeds": [0, 1],
            "noise": [{"rate": 0.3, "mode": "confusing"}],
            "drop": ["default", "loss", "cleanlab", "random", "oracle"],
            "relabel": ["default"],
            "kfold": {"rate": 0.3, "mode": "confusing", "folds": 2},
        },
    }  # fmt: skip


# --- rerun plans ------------------------------------------------------------------------------------

REPORT_RULES = {"report_tables", "report_plots", "report_galleries", "explorer"}


def plan_after_change(workflow, change) -> str:
    """Dry run of the finished tiny tree with a changed config (written beside the original)."""
    config = copy.deepcopy(workflow.config)
    change(config)
    changed = write_config(workflow.workdir, config, name="changed.yaml")
    return run_snakemake(
        workflow.workdir, "-n", "--cores", "1", "--configfile", str(changed)
    ).stdout
