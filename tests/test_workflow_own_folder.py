"""The walkthrough "Your own images" (docs/usage.md), word for word, in a project folder of its own.

The blocks the page marks with ``<!-- walkthrough: ... -->`` are run as they stand: the set-up (the
project folder, its ``workflow/Snakefile`` using this checkout as a module), the config and the
runs (dry run, one version's report, everything, a no-op); and the git-host form of the module,
read from a tag. Only the three paths at the top of the set-up (this checkout, a temporary project
folder, a generated ImageFolder of Animals-10's class folders) and the git form's owner and tag are
replaced, and the config's model and image size are shrunk to CI's budget; its dataset and
versions are the walkthrough's. The SLURM block runs in tests/test_workflow_slurm.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml
from conftest import REPO
from snakemake_runs import SNAKEMAKE
from walkthrough import CI_SIZE, run_block, set_up_project, walkthrough_block

from tracinflow.config import deep_merge

pytestmark = pytest.mark.workflow


def test_the_walkthrough_runs_word_for_word_in_a_project_folder_of_its_own(tmp_path):
    repo_results = sorted((REPO / "results").glob("*"))
    stamp_before = REPO / "results/.tracinflow-run.json"
    stamp_before = stamp_before.read_bytes() if stamp_before.exists() else None
    walkthrough = set_up_project(tmp_path)
    project, images, config = walkthrough.project, walkthrough.images, walkthrough.config
    assert (project / "workflow/Snakefile").read_text().count(f'"{REPO}/workflow/Snakefile"') == 1
    assert (project / "profiles/slurm/config.yaml").is_file()

    steps = run_block("run", walkthrough.variables, tmp_path / "snapshots")
    step = {run.command: run for run in steps}  # (the no-op rerun repeats a command: steps[-1])

    # the dry run plans every job and writes nothing
    dry = step["snakemake -n"].output
    assert "Job stats:" in dry and re.search(r"^explorer\s+1$", dry, re.M), dry[-3000:]
    assert step["snakemake -n"].tree == []
    # one version's text report first: what it needs, not the other reports or the page
    targeted = "snakemake --cores all results/baseline/reports/influence_report.txt"
    after_report = step[targeted].tree
    assert "results/baseline/reports/influence_report.txt" in after_report
    assert "results/baseline/explorer" not in after_report
    assert "results/cross_version" not in after_report
    # everything, in the project folder
    assert (project / "results/baseline/explorer/index.html").is_file()
    assert (project / "results/cross_version/summary.md").is_file()
    assert (project / "logs/train_model/baseline.log").is_file()
    assert any((project / "results/benchmarks").rglob("*.tsv"))
    stamp = json.loads((project / "results/.tracinflow-run.json").read_text())["folders"]
    assert stamp["baseline"]["name"] == "animals10"
    assert stamp["baseline"]["resolved_root"] == str(images.resolve())
    # the second full run has nothing to do
    assert "Nothing to be done" in steps[-1].output, steps[-1].output[-3000:]
    # nothing went into the repository's results
    assert sorted((REPO / "results").glob("*")) == repo_results
    assert not (REPO / "results/data/animals10").exists()
    assert not (REPO / "logs/build_manifest/animals10.log").exists()
    stamp_now = REPO / "results/.tracinflow-run.json"
    assert (stamp_now.read_bytes() if stamp_now.exists() else None) == stamp_before

    # the same folder through -d from the repository: the same workflow, up to date
    direct = subprocess.run(
        [SNAKEMAKE, "-n", "-d", str(project)], cwd=REPO, capture_output=True, text=True
    )
    assert "Nothing to be done" in direct.stdout + direct.stderr, direct.stderr[-3000:]

    # a config of another dataset is refused in this tree, which stays as it was
    other = deep_merge(config, {"dataset": {"name": "animals10_again", "root": str(images)}})
    (project / "other.yaml").write_text(yaml.safe_dump(deep_merge(other, CI_SIZE)))
    before = sorted(str(path) for path in (project / "results").rglob("*"))
    refused = subprocess.run(
        [SNAKEMAKE, "-n", "--configfile", "other.yaml"],
        cwd=project, capture_output=True, text=True,
    )  # fmt: skip
    message = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert f"{project.resolve()}/results/baseline from dataset 'animals10'" in message, message
    assert f"({project.resolve()}/other.yaml) names dataset 'animals10_again'" in message
    assert sorted(str(path) for path in (project / "results").rglob("*")) == before


def test_the_module_from_a_git_host_reads_the_workflow_from_a_tag(tmp_path):
    """The walkthrough's git-host form, word for word but for its owner and tag: the workflow's
    files come from a tag of the repository through Snakemake's git cache, seeded here with a bare
    clone of this checkout (there is no network), not from a checkout; the project builds one
    version's report and is then up to date."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        pytest.skip(
            "not a git checkout: the git form reads the workflow from the repository's history"
        )
    owner, tag = "tracinflow-ci", "ci-release"
    cache = tmp_path / "cache"  # XDG_CACHE_HOME: Snakemake's cache is <it>/snakemake/snakemake/
    source_cache = cache / "snakemake/snakemake/source-cache"
    clone = source_cache / "snakemake-git-cache/github.com" / owner / "tracinflow"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "tag", tag, head.stdout.strip()], check=True)

    # the walkthrough's project folder, its workflow/Snakefile the git form instead of the
    # checkout's path
    project = set_up_project(tmp_path).project
    snakefile = walkthrough_block("module-from-git").replace("<owner>", owner).replace("<tag>", tag)
    assert snakefile.count(f'github("{owner}/tracinflow", path="workflow/Snakefile", tag="{tag}")') == 1  # fmt: skip
    (project / "workflow/Snakefile").write_text(snakefile + "\n")

    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "OMP_WAIT_POLICY": "PASSIVE"}
    target = "results/baseline/reports/influence_report.txt"

    def snakemake(*args):
        done = subprocess.run([SNAKEMAKE, *args], cwd=project, env=env, capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
        return done.stdout + done.stderr

    snakemake("--cores", "all", target)
    assert (project / target).is_file()
    assert sorted(path.name for path in (project / "workflow").iterdir()) == ["Snakefile"]
    # what Snakemake read from the tag: the rules and the scripts its jobs ran, as committed
    read = source_cache / "hosted-git/githubfile/github.com" / owner / "tracinflow" / tag
    for path in [
        "workflow/Snakefile",
        "workflow/rules/common.smk",
        "workflow/scripts/train_model.py",
    ]:
        committed = subprocess.run(
            ["git", "-C", str(clone), "show", f"{tag}:{path}"], capture_output=True, check=True
        ).stdout
        # (Snakemake reads them through GitPython, which drops the final newline)
        assert (read / path).read_bytes().rstrip(b"\n") == committed.rstrip(b"\n"), path
    assert "Nothing to be done" in snakemake("-n", target)
