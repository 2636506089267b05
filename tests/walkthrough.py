"""The walkthrough "Your own images" (docs/usage.md) as its tests run it: the blocks the page marks
with ``<!-- walkthrough: <name> -->``, the set-up's paths replaced, run in bash as a user's shell
would."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from types import SimpleNamespace

import yaml
from conftest import REPO, make_plain_folder

from tracinflow.config import deep_merge

#: what CI changes in the walkthrough's config: a model that trains in seconds
#: (tests/snakemake_runs.py's)
CI_SIZE = {
    "dataset": {"image_size": 16},
    "model": {"arch": "small_resnet", "pretrained": None, "width": 4, "head": {"hidden": [16, 8]}},
    "training": {
        "batch_size": 32,
        "stage1": {"epochs": 1},
        "stage2": {"max_epochs": 2, "lr_backbone": 1e-3, "lr_head": 1e-3,
                   "checkpoint_epochs": [1, 2], "train_batchnorm": True},
    },
    "influence": {"top_k": 5},
    "reports": {"galleries": {"mispredictions": 3, "suspects": 6, "thumbnail_px": 48}},
}  # fmt: skip


#: the page the walkthrough's blocks are on
WALKTHROUGH = REPO / "docs/usage.md"


def walkthrough_block(name: str) -> str:
    """The fenced block that follows ``<!-- walkthrough: <name> -->`` in docs/usage.md."""
    page = WALKTHROUGH.read_text()
    found = re.search(rf"<!-- walkthrough: {name} -->\n```\w+\n(.*?)\n```\n", page, re.S)
    assert found, f"{WALKTHROUGH.relative_to(REPO)} has no walkthrough block {name!r}"
    return found[1]


def with_paths(setup: str, **paths) -> str:
    """The set-up block with its path variables (``TRACINFLOW=...`` at a line's start) set to
    ``paths``; nothing else changes."""
    for variable, path in paths.items():
        setup, count = re.subn(
            rf"^{variable}=\S+", f"{variable}={shlex.quote(str(path))}", setup, flags=re.M
        )
        assert count == 1, variable
    return setup


def run_bash(script: str):
    """Run ``script`` in bash as a shell running it would (stopping at the first failing command);
    return its output, stdout and stderr together."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:]
    return result.stdout


def set_up_project(tmp_path) -> SimpleNamespace:
    """The walkthrough's set-up block with its paths in ``tmp_path`` (a generated ImageFolder of the
    config's class folders, 12 images each), then its config, shrunk to ``CI_SIZE``, as the
    project's config. Returns the project, images and the walkthrough's config, and the set-up's
    variable lines (to start a later block's shell with them, as the user's shell has them)."""
    config = yaml.safe_load(walkthrough_block("config"))
    images = make_plain_folder(
        tmp_path / "Downloads/raw-img", dict.fromkeys(config["dataset"]["class_names"], 12)
    )
    project = tmp_path / "animals10"
    setup = with_paths(walkthrough_block("set-up"), TRACINFLOW=REPO, PROJECT=project, IMAGES=images)
    run_bash(setup)
    (project / "config/config.yaml").write_text(yaml.safe_dump(deep_merge(config, CI_SIZE)))
    variables = [
        line for line in setup.splitlines() if re.match(r"(TRACINFLOW|PROJECT|IMAGES)=", line)
    ]
    return SimpleNamespace(project=project, images=images, config=config, variables=variables)


def run_block(name: str, variables: list[str], snapshot_dir) -> list[SimpleNamespace]:
    """Run the walkthrough's block ``name``, one-line commands, in one bash as written (after the
    set-up's ``variables``). Returns each command (without its comment) with its output, stdout and
    stderr together, and the project's results tree after it (``find results``, listed into
    ``snapshot_dir``)."""
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    block = walkthrough_block(name)
    assert "<<" not in block and "\\\n" not in block, "one command a line"
    script = []
    for n, line in enumerate([*variables, *block.splitlines()]):
        snapshot = shlex.quote(str(snapshot_dir / str(n)))
        script += [line, f"echo '@@step {n}'",
                   f'([ -n "$PROJECT" ] && cd "$PROJECT" && find results | sort) > {snapshot} 2>/dev/null || true']  # fmt: skip
    outputs = re.split(r"^@@step \d+\n", run_bash("\n".join(script)), flags=re.M)[:-1]
    return [
        SimpleNamespace(
            command=line.split("#")[0].strip(),
            output=outputs[n],
            tree=(snapshot_dir / str(n)).read_text().split(),
        )
        for n, line in enumerate(block.splitlines(), start=len(variables))
    ]
