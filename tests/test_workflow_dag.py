"""The DAG at work, in real snakemake runs of the tiny three-version config: the dry-run plan, reruns
of exactly the stale jobs after a setting changes, targeted builds, the SLURM profile's resources
and the HTML report."""

import contextlib
import os

import pytest
from conftest import REPO
from snakemake_runs import (
    REPORT_RULES,
    plan_after_change,
    planned_job_blocks,
    planned_jobs,
    planned_versions,
    resources_of,
    run_snakemake,
    tiny_config,
    write_config,
)

pytestmark = pytest.mark.workflow


def test_dry_run_shows_every_job_of_every_version_before_anything_ran(tmp_path):
    write_config(tmp_path, tiny_config())
    dry = run_snakemake(tmp_path, "-n", "--cores", "1")
    assert planned_jobs(dry.stdout) == {
        "make_demo_dataset": 1,
        "build_manifest": 1,
        "split_dataset": 1,
        "results_stamp": 1,  # which dataset the results folders are made from
        "cache_images": 3,
        "build_train_set": 3,
        "train_model": 3,
        "predict": 3,
        "extract_factors": 9,  # 3 versions x (train, val, test), 2 checkpoints each
        "influence_shard": 14,  # v1, v3: 2 x 2 tiles, v2: 2 x 3
        "merge_topk": 3,
        "self_influence": 3,
        "validation_influence": 3,
        "suspicion_scores": 3,  # no cleanlab_logistic: the tiny model starts from no weights
        "report_tables": 3,
        "report_plots": 3,
        "report_galleries": 3,
        "explorer": 3,
        "noise_detection": 2,  # v2 plants noise, v3 inherits it
        "cross_version": 1,
        "all": 1,
    }
    assert planned_versions(dry.stdout) == {"v1", "v2", "v3"}
    assert not (tmp_path / "results").exists()


def test_named_version_target_plans_that_version_alone(tmp_path):
    write_config(tmp_path, tiny_config())
    listed = run_snakemake(tmp_path, "--list-target-rules").stdout.split()
    assert {"all", "version_v1", "version_v2", "version_v3"} <= set(listed)
    dry = run_snakemake(tmp_path, "-n", "--cores", "1", "version_v2")
    assert planned_versions(dry.stdout) == {"v2"}
    jobs = planned_jobs(dry.stdout)
    assert jobs["train_model"] == 1 and jobs["influence_shard"] == 6
    assert REPORT_RULES <= set(jobs)


def test_targeted_report_build_on_a_fresh_tree_runs_only_that_versions_chain(tiny_workflow):
    jobs = planned_jobs(tiny_workflow.targeted_output)
    assert jobs == {
        "make_demo_dataset": 1,
        "build_manifest": 1,
        "split_dataset": 1,
        "cache_images": 3,
        "build_train_set": 1,
        "train_model": 1,
        "predict": 1,
        "extract_factors": 3,
        "influence_shard": 4,
        "merge_topk": 1,
        "self_influence": 1,
        "validation_influence": 1,
        "suspicion_scores": 1,
        "report_tables": 1,
    }
    assert "v2" not in tiny_workflow.results_after_targeted
    assert "v3" not in tiny_workflow.results_after_targeted
    assert "v1" in tiny_workflow.results_after_targeted


def test_finished_tree_plans_nothing(tiny_workflow):
    dry = run_snakemake(tiny_workflow.workdir, "-n", "--cores", "1")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_one_versions_seed_reruns_that_version_alone(tiny_workflow):
    dry = plan_after_change(tiny_workflow, lambda c: c["versions"]["v1"].update(seed=7))
    assert planned_versions(dry) == {"v1"}
    jobs = planned_jobs(dry)
    assert jobs["train_model"] == 1 and jobs["extract_factors"] == 3
    assert jobs["influence_shard"] == 4 and REPORT_RULES <= set(jobs)
    assert jobs["cross_version"] == 1 and "build_train_set" not in jobs
    assert "Params have changed since last execution" in dry


def test_a_change_to_a_version_reruns_the_versions_built_from_it(tiny_workflow):
    # v3 trains on v2's training set minus v2's suspects, so it follows v2; v1 does not
    dry = plan_after_change(tiny_workflow, lambda c: c["versions"]["v2"].update(seed=7))
    assert planned_versions(dry) == {"v2", "v3"}
    assert planned_jobs(dry)["train_model"] == 2


@pytest.mark.parametrize("change", [{"top_k": 4}, {"precision": "bf16"}], ids=str)
def test_top_k_reruns_shards_merge_and_reports_not_training_or_factors(tiny_workflow, change):
    dry = plan_after_change(tiny_workflow, lambda c: c["influence"].update(change))
    jobs = set(planned_jobs(dry))
    assert jobs == {"influence_shard", "merge_topk", "cross_version", "all"} | REPORT_RULES
    assert planned_versions(dry) == {"v1", "v2", "v3"}


def test_report_settings_rerun_only_reports(tiny_workflow):
    dry = plan_after_change(tiny_workflow, lambda c: c["reports"].update(ranking="combined"))
    # the ranking also names the default row of the noise evaluation
    assert set(planned_jobs(dry)) == {"noise_detection", "cross_version", "all"} | REPORT_RULES
    dry = plan_after_change(
        tiny_workflow, lambda c: c["versions"]["v1"].update(reports={"galleries": {"suspects": 4}})
    )
    # cross_version records every version's settings in version_registry.json
    assert planned_jobs(dry) == {
        "report_plots": 1, "report_galleries": 1, "cross_version": 1, "all": 1,
    }  # fmt: skip
    assert planned_versions(dry) == {"v1"}


def test_slurm_profile_dry_run_resolves_gpu_and_partitions(tmp_path):
    config = tiny_config()
    config["cluster"] = {"gpu": True}
    write_config(tmp_path, config)
    dry = run_snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles/slurm"))
    jobs = planned_job_blocks(dry.stdout)
    assert {job["rule"] for job in jobs} >= {"train_model", "influence_shard", "report_tables"}
    for job in jobs:
        resources = resources_of(job)
        if job["rule"] in {"train_model", "predict", "extract_factors", "influence_shard"}:
            assert resources["gpu"] == "1", job
            assert resources["slurm_partition"] == "EDIT-your-gpu-partition", job
        elif job["rule"] != "all":
            assert resources.get("gpu", "0") == "0", job
            assert resources["slurm_partition"] == "EDIT-your-cpu-partition", job
        if job["rule"] == "train_model":
            assert resources["runtime"] == "720" and resources["mem_mb"] == "8000"
        if job["rule"] != "all":
            assert resources["slurm_account"] == "EDIT-your-account"


def test_without_cluster_gpu_no_rule_asks_for_one(tmp_path):
    write_config(tmp_path, tiny_config())
    dry = run_snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles/slurm"))
    assert all(resources_of(job).get("gpu", "0") == "0" for job in planned_job_blocks(dry.stdout))


def test_local_profile_resolves(tmp_path):
    write_config(tmp_path, tiny_config())
    dry = run_snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles/local"))
    assert planned_jobs(dry.stdout)["train_model"] == 3


def test_html_report_after_a_run(tiny_workflow):
    report = tiny_workflow.workdir / "report.html"
    run_snakemake(tiny_workflow.workdir, "--report", str(report))
    html = report.read_text(errors="replace")
    assert len(html) > 10_000
    for name in (
        "v1",
        "v3",
        "influence_report.txt",
        "training_curves.png",
        "suspects.png",
        "noise_detection.png",
        "summary.md",
    ):
        assert name in html, name


def test_a_configfile_on_the_command_line_replaces_the_default_config(tmp_path):
    default = tiny_config()
    default["versions"] = {"demo_a": {}, "demo_b": {"seed": 3}}
    write_config(tmp_path, default)
    mine = write_config(tmp_path, tiny_config(), name="mine.yaml")
    dry = run_snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(mine))
    # merged, the run would also train the default config's versions
    assert planned_versions(dry.stdout) == {"v1", "v2", "v3"}


# --- every file declared ----------------------------------------------------------------------------


def declared_outputs(workdir) -> set[str]:
    """Every output file of every job, as `snakemake --summary` lists them."""
    summary = run_snakemake(workdir, "--summary").stdout
    return {line.split("\t")[0] for line in summary.splitlines()[1:] if line.strip()}


def test_every_file_the_run_wrote_is_a_declared_output(tiny_workflow):
    workdir = tiny_workflow.workdir
    declared = declared_outputs(workdir)
    folders = [path for path in declared if (workdir / path).is_dir()]
    written = [
        path.relative_to(workdir).as_posix()
        for path in (workdir / "results").rglob("*")
        if path.is_file()
    ]
    # benchmark tables are declared by each rule's `benchmark:`, which --summary does not list
    undeclared = [
        path
        for path in written
        if path not in declared
        and not path.startswith("results/benchmarks/")
        and not any(path.startswith(f"{folder}/") for folder in folders)
    ]
    assert undeclared == []
    for version in ("v1", "v2", "v3"):  # the checkpoints are outputs, the scratch folder is gone
        assert f"results/{version}/model/epoch_002.pt" in declared
        assert not (workdir / f"results/{version}/model/.training").exists()
    assert "results/cross_version/confused_pairs.csv" in declared


@contextlib.contextmanager
def moved_aside(path):
    """``path`` gone for the block, then back with its bytes and times (a rename keeps both)."""
    aside = path.with_name(f".aside.{path.name}")
    os.replace(path, aside)
    try:
        yield
    finally:
        os.replace(aside, path)


@contextlib.contextmanager
def replaced(path, data: bytes):
    """``path`` holding ``data`` (written now, so newer than everything) for the block."""
    original, times = path.read_bytes(), path.stat()
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


V1_AFTER_FACTORS = {
    "influence_shard": 4,
    "merge_topk": 1,
    "self_influence": 1,
    "validation_influence": 1,
    "suspicion_scores": 1,
    "report_tables": 1,
    "report_plots": 1,
    "report_galleries": 1,
    "explorer": 1,
    "cross_version": 1,
    "all": 1,
}


def assert_nothing_to_do(workdir) -> None:
    dry = run_snakemake(workdir, "-n", "--cores", "1")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_deleting_a_checkpoint_plans_its_retraining_and_everything_downstream(tiny_workflow):
    workdir = tiny_workflow.workdir
    with moved_aside(workdir / "results/v1/model/epoch_002.pt"):
        dry = run_snakemake(workdir, "-n", "--cores", "1").stdout
    assert planned_versions(dry) == {"v1"}
    expected = {"train_model": 1, "predict": 1, "extract_factors": 3} | V1_AFTER_FACTORS
    assert planned_jobs(dry) == expected
    assert "Missing output files: results/v1/model/epoch_002.pt" in dry
    assert_nothing_to_do(workdir)  # restored


def test_replacing_a_checkpoint_reruns_its_factors_and_what_depends_on_them(tiny_workflow):
    workdir = tiny_workflow.workdir
    other = (workdir / "results/v2/model/epoch_003.pt").read_bytes()
    with replaced(workdir / "results/v1/model/epoch_003.pt", other):
        dry = run_snakemake(workdir, "-n", "--cores", "1").stdout
    assert planned_versions(dry) == {"v1"}
    # the train, val and test split, each job extracting every checkpoint of v1
    assert planned_jobs(dry) == {"extract_factors": 3} | V1_AFTER_FACTORS
    factor_jobs = [job for job in planned_job_blocks(dry) if job["rule"] == "extract_factors"]
    assert sorted(job["wildcards"] for job in factor_jobs) == [
        f"version=v1, split={split}" for split in ("test", "train", "val")
    ]
    assert all("results/v1/model/epoch_003.pt" in job["reason"] for job in factor_jobs)
    assert_nothing_to_do(workdir)  # restored


def test_deleting_a_cross_version_table_plans_cross_version_alone(tiny_workflow):
    workdir = tiny_workflow.workdir
    with moved_aside(workdir / "results/cross_version/confused_pairs.csv"):
        dry = run_snakemake(workdir, "-n", "--cores", "1").stdout
    assert planned_jobs(dry) == {"cross_version": 1, "all": 1}
