"""The workflow on a real SLURM cluster: `snakemake --profile tests/profiles/slurm-local` on the tiny
config's v1 (about 20 jobs), then what sacct recorded, the outputs against a local run, a second
invocation and a job made to fail; and the walkthrough's SLURM block (docs/usage.md) in its project
folder.
Needs the one-node cluster of ci/slurm-up.sh (run as root; .ci/run does it); skipped with the
reason elsewhere. The profile test below needs no cluster."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections import Counter
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO
from snakemake_runs import planned_jobs, run_snakemake, tiny_config, write_config
from walkthrough import run_block, set_up_project

PROFILE = REPO / "tests/profiles/slurm-local"
# The only keys in which the test profile may differ from profiles/slurm (site-specific values).
SITE_SETTINGS = {"slurm_account", "slurm_partition"}
SITE_KEYS = {"slurm-init-seconds-before-status-checks"}


def load_profile(path):
    return yaml.safe_load((path / "config.yaml").read_text())


def masked(profile: dict) -> dict:
    """The profile without its site-specific keys and values."""
    profile = {key: value for key, value in copy.deepcopy(profile).items() if key not in SITE_KEYS}
    resources = [profile.get("default-resources", {}), *profile.get("set-resources", {}).values()]
    for settings in resources:
        for key in SITE_SETTINGS & set(settings):
            settings[key] = "<site>"
    return profile


def test_test_profile_differs_from_the_real_one_only_in_site_values():
    real, local = load_profile(REPO / "profiles/slurm"), load_profile(PROFILE)
    assert masked(local) == masked(real)
    assert local["default-resources"]["slurm_partition"] == "debug"
    assert local["default-resources"]["slurm_account"] == "root"
    assert set(local) - set(real) <= SITE_KEYS


def slurm_cluster_problem() -> str | None:
    """Why no usable SLURM cluster answers here, or None when one does."""
    if shutil.which("sbatch") is None:
        return "sbatch not found"
    try:
        sinfo = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30
        )
        if sinfo.returncode != 0:
            return f"sinfo failed: {sinfo.stderr.strip()}"
        if not {"idle", "mix", "alloc"} & set(sinfo.stdout.split()):
            return f"no node is up (sinfo: {sinfo.stdout.split()})"
        sacct = subprocess.run(["sacct", "-n", "-X"], capture_output=True, text=True, timeout=30)
        if sacct.returncode != 0:
            return f"sacct failed: {sacct.stderr.strip()}"
    except subprocess.TimeoutExpired as error:
        return f"{error.cmd[0]} did not answer in {error.timeout} s"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    problem = slurm_cluster_problem()
    if problem:
        pytest.skip(f"no SLURM cluster: run ci/slurm-up.sh (as root) first ({problem})")


def v1_config() -> dict:
    """The tiny config with v1 alone: v1's files depend only on v1's settings and the shared data,
    so they must equal the v1 files of the three-version local run (tiny_workflow)."""
    config = tiny_config()
    config["versions"] = {"v1": config["versions"]["v1"]}
    return config


def run_on_slurm(workdir, *args, check=True):
    """snakemake --profile tests/profiles/slurm-local, with its output and SLURM run ID."""
    started = datetime.now() - timedelta(minutes=1)
    result = run_snakemake(workdir, "--profile", str(PROFILE), *args, check=check)
    output = result.stdout + result.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", output)
    return SimpleNamespace(
        returncode=result.returncode,
        output=output,
        run_id=run_id[1] if run_id else None,
        started=started,
    )


def sacct_jobs(run) -> list[dict]:
    """The SLURM jobs of one Snakemake run: the plugin names every job after the run ID and puts
    `rule_<rule>[_wildcards_<values>]` in its comment (sacct shows it with
    AccountingStoreFlags=job_comment, set by ci/slurm-up.sh)."""
    assert run.run_id, run.output
    query = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--name", run.run_id, "-S", run.started.isoformat("T", "seconds"),
         "-o", "JobID,Comment,State"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    jobs = []
    for line in query.stdout.splitlines():
        job_id, comment, state = line.split("|")
        rule, _, wildcards = comment.removeprefix("rule_").partition("_wildcards_")
        jobs.append({"id": job_id, "rule": rule, "wildcards": wildcards, "state": state.split()[0]})
    return jobs


def job_blocks(output: str) -> Counter:
    """{("rule" or "localrule", rule): count} of the jobs Snakemake started."""
    return Counter(re.findall(r"^(localrule|rule) (\w+):$", output, re.M))


def cluster_jobs(output: str) -> Counter:
    """{rule: count} of the jobs Snakemake submitted to the cluster (all but the local rules)."""
    return Counter({rule: n for (kind, rule), n in job_blocks(output).items() if kind == "rule"})


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    """v1 of the tiny config run end to end through the SLURM profile, in a fresh directory."""
    workdir = tmp_path_factory.mktemp("slurm-workflow")
    write_config(workdir, v1_config())
    run = run_on_slurm(workdir)
    return SimpleNamespace(workdir=workdir, run=run, jobs=sacct_jobs(run))


@pytest.mark.workflow
@pytest.mark.slurm
def test_every_cluster_job_ran_as_a_completed_slurm_job(slurm_run):
    started = job_blocks(slurm_run.run.output)
    remote = cluster_jobs(slurm_run.run.output)
    local = {rule for kind, rule in started if kind == "localrule"}
    assert sum(started.values()) == sum(planned_jobs(slurm_run.run.output).values())
    assert remote["train_model"] == 1 and remote["influence_shard"] == 4, started
    # every job outside the local rules is one SLURM job, and all of them completed
    assert Counter(job["rule"] for job in slurm_run.jobs) == remote
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", slurm_run.run.output)
    assert sorted(submitted) == sorted(job["id"] for job in slurm_run.jobs)
    assert {job["state"] for job in slurm_run.jobs} == {"COMPLETED"}, slurm_run.jobs
    # the local rules (all, merges, small reports) ran on the submitting host
    assert "all" in local and not local & set(remote)
    shards = [job for job in slurm_run.jobs if job["rule"] == "influence_shard"]
    assert len({job["id"] for job in shards}) == 4
    assert sorted(job["wildcards"] for job in shards) == ["v1_0_0", "v1_0_1", "v1_1_0", "v1_1_1"]


def flat(value, prefix="") -> dict:
    """A JSON document as {"a.b.0.": leaf}, so that pytest.approx compares every number."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value}
    return {k: v for key, item in items for k, v in flat(item, f"{prefix}{key}.").items()}


def read_json_flat(path) -> dict:
    return flat(json.loads(path.read_text()))


COMPARED_TABLES = [
    "results/data/digits/manifest.parquet",
    "results/v1/train_set.parquet",
    "results/v1/predictions/test.parquet",
    "results/v1/predictions/train.parquet",
    "results/v1/influence/top_k_influences.parquet",
    "results/v1/influence/self_influence.parquet",
    "results/v1/reports/mislabeled_inspection_report.csv",
]


@pytest.mark.workflow
@pytest.mark.slurm
def test_outputs_equal_those_of_the_local_run(slurm_run, request):
    # requested only now so that a missing cluster skips before the local run is built
    local = request.getfixturevalue("tiny_workflow").workdir
    on_slurm = slurm_run.workdir
    # bit for bit: the same threads per job (the rules' threads, SLURM's cpus-per-task), the same
    # block grid, the same deterministic CPU kernels, so the same bytes
    for name in COMPARED_TABLES:
        assert (on_slurm / name).read_bytes() == (local / name).read_bytes(), name
    slurm_metrics = read_json_flat(on_slurm / "results/v1/metrics.json")
    assert slurm_metrics == read_json_flat(local / "results/v1/metrics.json")
    assert (on_slurm / "results/v1/reports/influence_report.txt").read_text() == (
        local / "results/v1/reports/influence_report.txt"
    ).read_text()


@pytest.mark.workflow
@pytest.mark.slurm
def test_second_invocation_submits_nothing(slurm_run):
    again = run_on_slurm(slurm_run.workdir)
    assert "Nothing to be done" in again.output
    assert not job_blocks(again.output)
    if again.run_id:
        assert sacct_jobs(again) == []


@pytest.mark.workflow
@pytest.mark.slurm
def test_a_failing_job_is_reported_with_its_log(slurm_run, tmp_path):
    # A corrupt metrics file (as a broken disk or a killed writer leaves it) in a copy of the
    # finished tree: report_tables, forced to rerun, fails on it inside its SLURM job.
    workdir = tmp_path / "broken"
    shutil.copytree(slurm_run.workdir, workdir, symlinks=True)
    (workdir / "results/v1/metrics.json").write_text('{"train": {"accuracy": 0.1,')
    run = run_on_slurm(workdir, "--forcerun", "report_tables", "--retries", "0", check=False)
    assert run.returncode != 0, run.output
    jobs = sacct_jobs(run)
    assert [(job["rule"], job["state"]) for job in jobs] == [("report_tables", "FAILED")], jobs
    job_id = jobs[0]["id"]
    # Snakemake's error names the rule, the SLURM job and both logs: the rule's own and sbatch's
    assert re.search(
        rf"^Error in rule report_tables:\n    message: SLURM-job '{job_id}' failed, "
        r"SLURM status is: 'FAILED'",
        run.output,
        re.M,
    ), run.output
    slurm_log = f"logs/slurm/rule_report_tables/v1/{job_id}.log"
    assert re.search(
        rf"^    log: logs/report_tables/v1\.log, \S*/{re.escape(slurm_log)} ", run.output, re.M
    ), run.output
    assert "JSONDecodeError" in run.output  # the rule's log, shown by show-failed-logs
    # nothing else started (the failed job's own log, shown too, says "localrule report_tables")
    assert {rule for _, rule in job_blocks(run.output)} == {"report_tables"}


def job_memory(job_id: str) -> dict:
    """The memory SLURM granted a job (ReqMem) and the most its steps used (MaxRSS), in MiB."""
    query = subprocess.run(
        ["sacct", "-j", job_id, "-n", "-P", "--units=M", "-o", "JobID,ReqMem,MaxRSS"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    requested, used = 0.0, 0.0
    for line in query.stdout.splitlines():
        step, req, rss = line.split("|")
        if step == job_id:
            requested = float(req.rstrip("M"))
        if rss:
            used = max(used, float(rss.rstrip("M")))
    return {"requested": requested, "used": used}


@pytest.mark.workflow
@pytest.mark.slurm
def test_a_job_killed_for_its_memory_is_retried_with_twice_the_memory(slurm_run, tmp_path):
    # SLURM kills a job whose processes outgrow its --mem (ci/slurm-up.sh: OverMemoryKill). Asked
    # for two thirds of what self_influence used in the first run, attempt 1 is killed; the
    # profile's `retries: 1` resubmits it with mem_mb doubled (4/3 of its use), and it completes.
    (first,) = [job for job in slurm_run.jobs if job["rule"] == "self_influence"]
    used = job_memory(first["id"])["used"]
    assert used > 0, "no MaxRSS recorded: is JobAcctGatherType jobacct_gather/linux?"
    workdir = tmp_path / "retry"
    shutil.copytree(slurm_run.workdir, workdir, symlinks=True)
    (workdir / "results/v1/influence/self_influence.parquet").unlink()
    base = int(used * 2 / 3)
    # the profile's way to set a rule's memory and keep it doubling with the attempt
    run = run_on_slurm(workdir, "--set-resources", f"self_influence:mem_mb={base}*attempt")
    attempts = [job for job in sacct_jobs(run) if job["rule"] == "self_influence"]
    assert [job["state"] for job in attempts][-1] == "COMPLETED" and len(attempts) == 2, attempts
    assert attempts[0]["state"] in {"OUT_OF_MEMORY", "FAILED", "CANCELLED"}, attempts
    memory = [job_memory(job["id"])["requested"] for job in attempts]
    assert memory == [base, 2 * base], memory
    assert (workdir / "results/v1/influence/self_influence.parquet").read_bytes() == (
        slurm_run.workdir / "results/v1/influence/self_influence.parquet"
    ).read_bytes()


@pytest.mark.workflow
@pytest.mark.slurm
def test_the_walkthroughs_project_folder_runs_on_slurm(slurm_cluster, tmp_path):
    # the walkthrough on a cluster (docs/usage.md): the project folder of its set-up block (the
    # workflow as a module), the copied profiles/slurm edited as the page says (the site values:
    # this cluster's, which are the test profile's), then its SLURM block word for word
    walkthrough = set_up_project(tmp_path)
    project = walkthrough.project
    shutil.copy(PROFILE / "config.yaml", project / "profiles/slurm/config.yaml")
    started = datetime.now() - timedelta(minutes=1)
    dry, run, again = run_block("slurm", walkthrough.variables, tmp_path / "snapshots")[-3:]

    assert dry.command == "snakemake -n --profile profiles/slurm"
    assert "Job stats:" in dry.output and "submitted with SLURM jobid" not in dry.output
    assert dry.tree == []
    # every job outside the local rules ran as a completed SLURM job, writing into the project
    run_id = re.search(r"SLURM run ID: (\S+)", run.output)
    assert run_id, run.output[-3000:]
    jobs = sacct_jobs(SimpleNamespace(run_id=run_id[1], started=started, output=run.output))
    remote = cluster_jobs(run.output)
    assert Counter(job["rule"] for job in jobs) == remote and remote["train_model"] == 1, jobs
    assert {job["state"] for job in jobs} == {"COMPLETED"}, jobs
    assert (project / "results/baseline/explorer/index.html").is_file()
    assert (project / "results/cross_version/summary.md").is_file()
    assert (project / "logs/train_model/baseline.log").is_file()
    assert "Nothing to be done" in again.output and not job_blocks(again.output)
