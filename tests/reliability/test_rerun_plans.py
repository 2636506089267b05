"""The promises of "Driving the workflow" (docs/usage.md) about what a run does, proven on dry runs
of the tiny three-version config: what a config edit reruns (the "what reruns" table), what
`version_<v>` builds for a version cleaned from another, that `--groups influence_shard=shards`
bundles the shard jobs, and that a second `make demo` does nothing.

v1 is plain; v2 hooks the whole head (its own `influence.layers`), has its own shard grid and
plants label noise; v3 trains on v2's training set minus v2's top suspects, so whatever changes
v2's suspicion scores retrains v3."""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess

import pytest
from conftest import REPO
from snakemake_runs import (
    REPORT_RULES,
    SNAKEMAKE,
    plan_after_change,
    planned_job_blocks,
    planned_jobs,
    run_snakemake,
    tiny_config,
    write_config,
)

pytestmark = pytest.mark.workflow

VERSIONS = ("v1", "v2", "v3")
NOISY = {"v2", "v3"}  # v2 plants noise, v3 inherits it: each has a noise_detection job
# every stage a version's influence computation runs once its factors change
FACTOR_CHAIN = {
    "extract_factors",
    "influence_shard",
    "merge_topk",
    "self_influence",
    "validation_influence",
    "suspicion_scores",
} | REPORT_RULES
AFTER_TRAINING = {"train_model", "predict"} | FACTOR_CHAIN
# cross_version records every version's settings and reads every version's results
SHARED = {"cross_version", "all"}


def plan_by_version(output: str) -> dict:
    """The rules of the jobs a dry run plans, by their {version} wildcard (None: jobs without one:
    the data stages, cross_version, the target rules)."""
    plan = {}
    for job in planned_job_blocks(output):
        match = re.search(r"\bversion=([^,\s]+)", job.get("wildcards", ""))
        plan.setdefault(match[1] if match else None, set()).add(job["rule"])
    return plan


def wildcard_values(output: str, rule: str, name: str) -> list[str]:
    """The values of wildcard ``name`` of every planned job of ``rule``."""
    return [
        re.search(rf"\b{name}=([^,\s]+)", job["wildcards"])[1]
        for job in planned_job_blocks(output)
        if job["rule"] == rule
    ]


# --- dataset.*, split.* ------------------------------------------------------------------------------

DATA_CHANGES = {
    # setting: (change, the data stages that read it and follow it, versions whose training set
    # is rebuilt). A training set is rows of the manifest (with planted flips): the pixels'
    # size does not change it, but v3's is chosen by v2's suspicion scores, which it does change.
    "dataset.image_size": (
        lambda c: c["dataset"].update(image_size=12),
        {"cache_images"},
        {"v3"},
    ),
    "split.seed": (
        lambda c: c.setdefault("split", {}).update(seed=5),
        {"split_dataset", "cache_images"},
        set(VERSIONS),
    ),
    "dataset.max_pixels": (
        lambda c: c["dataset"].update(max_pixels=10**7),
        {"build_manifest", "split_dataset", "cache_images"},
        set(VERSIONS),
    ),
    "dataset.demo": (
        lambda c: c["dataset"]["demo"].update(images_per_class=13),
        {"make_demo_dataset", "build_manifest", "split_dataset", "cache_images"},
        set(VERSIONS),
    ),
}


@pytest.mark.parametrize("setting", DATA_CHANGES)
def test_a_data_setting_reruns_the_data_stages_from_the_one_reading_it_and_every_version(
    tiny_workflow, setting
):
    change, data_rules, rebuilt = DATA_CHANGES[setting]
    dry = plan_after_change(tiny_workflow, change)
    expected = {None: SHARED | data_rules}
    for version in VERSIONS:
        expected[version] = (
            AFTER_TRAINING
            | ({"noise_detection"} if version in NOISY else set())
            | ({"build_train_set"} if version in rebuilt else set())
        )
    assert plan_by_version(dry) == expected
    assert planned_jobs(dry)["train_model"] == 3
    assert planned_jobs(dry)["extract_factors"] == 9  # 3 versions x (train, val, test)


# --- influence.layers, influence.target, influence.batch_size ----------------------------------------


def test_influence_layers_rerun_factors_and_influence_of_the_versions_using_them_not_training(
    tiny_workflow,
):
    dry = plan_after_change(tiny_workflow, lambda c: c["influence"].update(layers=["fc.2", "fc.4"]))
    # v2 hooks the head by its own setting, so the default's change leaves it (and v3's training
    # set, chosen by v2's suspicion scores) alone
    assert plan_by_version(dry) == {
        None: SHARED,
        "v1": FACTOR_CHAIN,
        "v3": FACTOR_CHAIN | {"noise_detection"},
    }
    assert planned_jobs(dry)["extract_factors"] == 6


def test_one_versions_influence_layers_rerun_that_versions_factors_alone(tiny_workflow):
    dry = plan_after_change(
        tiny_workflow, lambda c: c["versions"]["v1"].update(influence={"layers": "head"})
    )
    assert plan_by_version(dry) == {None: SHARED, "v1": FACTOR_CHAIN}
    assert planned_jobs(dry)["extract_factors"] == 3  # train, val, test (every checkpoint each)
    assert "Params have changed since last execution" in dry


def test_influence_batch_size_reruns_every_factor_and_what_follows_and_retrains_a_cleaned_version(
    tiny_workflow,
):
    dry = plan_after_change(tiny_workflow, lambda c: c["influence"].update(batch_size=7))
    # no version's own training reruns; v3's training set is v2's minus v2's top suspects, ranked
    # from v2's factors, so it is rebuilt and v3 retrained
    assert plan_by_version(dry) == {
        None: SHARED,
        "v1": FACTOR_CHAIN,
        "v2": FACTOR_CHAIN | {"noise_detection"},
        "v3": AFTER_TRAINING | {"build_train_set", "noise_detection"},
    }
    assert planned_jobs(dry)["train_model"] == 1


def test_influence_target_reruns_the_test_factors_shards_merge_and_reports_only(tiny_workflow):
    # the target is the test side's loss; train and val factors are always taken at the label, so
    # self-influence, the rankings and a cleaned version's training set stay
    dry = plan_after_change(tiny_workflow, lambda c: c["influence"].update(target="prediction"))
    test_side = {"extract_factors", "influence_shard", "merge_topk"} | REPORT_RULES
    assert plan_by_version(dry) == {None: SHARED} | dict.fromkeys(VERSIONS, test_side)
    assert wildcard_values(dry, "extract_factors", "split") == ["test"] * 3


# --- influence.shards, influence.memory_mb -----------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "change", "shards"),
    [
        # v1 and v3: 3 x 2 tiles, v2 (its own train tiles): 3 x 3
        ("shards", lambda c: c["influence"]["shards"].update(test=3), 6 + 9 + 6),
        ("memory_mb", lambda c: c["influence"].update(memory_mb=8), 4 + 6 + 4),
    ],
    ids=["influence.shards", "influence.memory_mb"],
)
def test_shard_settings_rerun_shards_merge_and_reports_not_training_or_factors(
    tiny_workflow, setting, change, shards
):
    dry = plan_after_change(tiny_workflow, change)
    after_shards = {"influence_shard", "merge_topk"} | REPORT_RULES
    assert plan_by_version(dry) == {None: SHARED} | dict.fromkeys(VERSIONS, after_shards)
    assert planned_jobs(dry)["influence_shard"] == shards


# --- version_<v> --------------------------------------------------------------------------------------

DATA_RULES = {"make_demo_dataset", "build_manifest", "split_dataset", "cache_images"}


def test_a_cleaned_versions_target_plans_what_it_needs_of_the_version_it_is_cleaned_from(tmp_path):
    write_config(tmp_path, tiny_config())
    dry = run_snakemake(tmp_path, "-n", "--cores", "1", "version_v3").stdout
    # v3's training set is v2's minus v2's suspects: v2's training set, model, predictions and
    # rankings (from its train and val factors); v3's explorer shows v2's prediction and top
    # proponents beside its own: v2's test factors, shards and merge; not v2's reports, nothing
    # of v1
    assert plan_by_version(dry) == {
        None: DATA_RULES | {"results_stamp", "version_v3"},
        "v2": {"build_train_set", "train_model", "predict", "extract_factors"}
        | {"self_influence", "validation_influence", "suspicion_scores"}
        | {"influence_shard", "merge_topk"},
        "v3": AFTER_TRAINING | {"build_train_set", "noise_detection"},
    }
    v2_factors = [
        job["wildcards"]
        for job in planned_job_blocks(dry)
        if job["rule"] == "extract_factors" and "version=v2" in job["wildcards"]
    ]
    assert sorted(re.search(r"split=(\w+)", w)[1] for w in v2_factors) == sorted(
        ["train", "val", "test"]
    )


def test_a_confusing_noise_versions_target_plans_the_reference_models_predictions(tmp_path):
    config = tiny_config()
    config["versions"]["v4"] = {
        "label_noise": {"rate": 0.25, "mode": "confusing", "reference": "v1"}
    }
    write_config(tmp_path, config)
    dry = run_snakemake(tmp_path, "-n", "--cores", "1", "version_v4").stdout
    assert plan_by_version(dry) == {
        None: DATA_RULES | {"results_stamp", "version_v4"},
        "v1": {"build_train_set", "train_model", "predict"},
        "v4": AFTER_TRAINING | {"build_train_set", "noise_detection"},
    }


# --- --groups influence_shard=shards -----------------------------------------------------------------


def planned_groups(output: str) -> list[dict]:
    """The group jobs a dry run lists: {"group": name, "jobs": [{"rule": ..., "<field>": ...}]}.
    Snakemake prints a group job as a "Group job <name> (jobs in lexicogr. order):" line followed
    by its jobs, indented one level deeper than a lone job's (a SLURM dry run adds an unindented
    "Shell command:" line to each); the next job of its own starts with an unindented time."""
    groups = []
    current = None
    for line in output.splitlines():
        header = re.match(r"^(?:\[[^\]]*\] )?Group job (\S+) ", line)
        if header:
            current = {"group": header[1], "jobs": []}
            groups.append(current)
        elif current is not None and (started := re.match(r"^    (?:local)?rule (\w+):$", line)):
            current["jobs"].append({"rule": started[1]})
        elif current is not None and (field := re.match(r"^        (\w+): (.*)$", line)):
            current["jobs"][-1][field[1]] = field[2]
        elif re.match(r"^(\[|(?:local)?rule |Job stats)", line):  # a job of its own
            current = None
    return groups


def test_grouping_the_shards_bundles_them_into_group_jobs_of_at_most_eight(tmp_path):
    write_config(tmp_path, tiny_config())
    profile = ("--profile", str(REPO / "profiles/slurm"))
    # the command line of docs/usage.md ("Many small shards in one submission")
    grouped = run_snakemake(
        tmp_path, "-n", *profile, "--groups", "influence_shard=shards",
        "--group-components", "shards=8",
    ).stdout  # fmt: skip
    groups = planned_groups(grouped)
    assert [group["group"] for group in groups] == ["shards"] * math.ceil(14 / 8)
    members = [job for group in groups for job in group["jobs"]]
    assert {job["rule"] for job in members} == {"influence_shard"}
    assert all(len(group["jobs"]) <= 8 for group in groups)
    tiles = {"v1": (2, 2), "v2": (2, 3), "v3": (2, 2)}
    every_shard = {
        f"version={version}, t={t}, r={r}"
        for version, (test, train) in tiles.items()
        for t in range(test)
        for r in range(train)
    }
    assert sorted(job["wildcards"] for job in members) == sorted(every_shard)
    # no shard left as a job of its own, and the rest of the plan as without groups
    assert "influence_shard" not in {job["rule"] for job in planned_job_blocks(grouped)}
    alone = run_snakemake(tmp_path, "-n", *profile).stdout
    assert planned_groups(alone) == []
    assert planned_jobs(grouped) == planned_jobs(alone)
    assert planned_jobs(alone)["influence_shard"] == 14


# --- a second make demo ------------------------------------------------------------------------------


def make_dry_run(checkout) -> list[str]:
    # as a newcomer's shell runs it, not as a sub-make of `make test` (which prints "Entering
    # directory" lines and passes its flags down)
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "CORES"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "demo"],
        cwd=checkout, capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return result.stdout.splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_second_make_demo_runs_only_snakemake_which_plans_nothing_on_a_finished_tree(
    tiny_workflow, tmp_path
):
    """What this proves: with the repository's Makefile, in a checkout where a first `make demo`
    has left its marks (`.venv/.installed` newer than pyproject.toml, the Fashion-MNIST files in
    place), `make -n demo` lists one command, the snakemake call, and no venv, pip install or
    download; and that very command, run in a finished tree, plans nothing. The checkout is a
    scratch copy of the Makefile and pyproject.toml, so the answer does not depend on whether this
    checkout fetched the demo data or edited pyproject.toml since its install; the finished tree
    is the tiny config's (the Fashion-MNIST demo itself is too slow for the suite). It does not
    run `make demo`."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, checkout / name)
    os.utime(checkout / "pyproject.toml", (1_000_000_000, 1_000_000_000))

    first = "\n".join(make_dry_run(checkout))  # a fresh clone: venv, install, data, then the run
    assert "-m venv .venv" in first and "pip install" in first
    assert "scripts/fetch-demo-data.sh" in first

    (checkout / ".venv").mkdir()
    (checkout / ".venv/.installed").touch()
    data = checkout / "resources/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
    data.parent.mkdir(parents=True)
    data.touch()
    second = make_dry_run(checkout)
    assert second == [".venv/bin/snakemake --cores all --configfile config/config.yaml"]

    # an edited pyproject.toml re-installs; its time set a minute past the stamp's, since file
    # times come from a coarse clock and a plain touch can land on the stamp's own tick
    stamp = (checkout / ".venv/.installed").stat().st_mtime
    os.utime(checkout / "pyproject.toml", (stamp + 60, stamp + 60))
    assert any("pip install" in line for line in make_dry_run(checkout))

    command = shlex.split(second[0])
    assert command[0] == ".venv/bin/snakemake"
    plan = subprocess.run(
        [SNAKEMAKE, "--snakefile", str(REPO / "workflow/Snakefile"), *command[1:], "-n"],
        cwd=tiny_workflow.workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Nothing to be done" in plan.stdout + plan.stderr
