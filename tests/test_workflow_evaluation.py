"""The counterfactual evaluation run for real on the tiny config: the reference's factors, 16 LDS
retrains (8 subsets x 2 seeds), a full retrain and 8 removal retrains, the tables, plots and
summary; a second run does nothing, and one more subset retrains that subset alone."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from snakemake_runs import planned_jobs, run_snakemake, tiny_config, write_config

from tracinflow.influence.methods import available_methods, damping_variants

pytestmark = pytest.mark.workflow

EVALUATION = {
    "reference": "v1",
    "lds": {"subsets": 8, "seeds": [0, 1], "bootstrap": 200},
    "removal": {"k": [1], "seeds": [0, 1]},
    "brittleness": {"test_images": 1, "k": [1, 3]},
    # the removal test's full retrain with seed 1 is the other member: no training more
    "ensemble": {"seeds": [1], "methods": ["tracin_final", "kfac_head"]},
}


def evaluation_config(subsets: int = 8) -> dict:
    config = {**tiny_config(), "versions": {"v1": {}}}
    config["evaluation"] = copy.deepcopy(EVALUATION)
    config["evaluation"]["lds"]["subsets"] = subsets
    return config


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("evaluation")
    write_config(workdir, evaluation_config())
    run_snakemake(workdir, "--cores", "2")
    return workdir


def test_the_evaluation_writes_every_methods_lds_with_its_controls(evaluated):
    table = pd.read_csv(evaluated / "results/evaluation/lds.csv")
    methods = table[table["kind"] == "method"]["method"].tolist()
    formed = available_methods(["fc.0", "fc.2", "fc.4"], [2, 3])
    assert methods == formed + damping_variants(formed)
    assert {"tracin_head_epoch_003", "kfac_head", "gn_final@0.01", "relatif_gn_final"} <= set(
        methods
    )
    assert table[table["default"]]["method"].tolist() == ["tracin_final"]  # v1's own layers
    chosen = table[table["chosen"]]
    assert len(chosen) == 1 and "@" not in chosen["method"].iloc[0]
    candidates = table[(table["kind"] == "method") & ~table["method"].str.contains("@")]
    assert chosen["lds_selection"].iloc[0] == candidates["lds_selection"].max()
    held_out = table.dropna(subset=["lds_held_out"])
    assert (held_out["held_out_ci_low"] <= held_out["lds_held_out"]).all()
    assert table["kind"].tolist()[-4:] == ["ensemble", "ensemble", "random", "ceiling"]
    ensembles = table[table["kind"] == "ensemble"]
    assert ensembles["method"].tolist() == ["ensemble2_tracin_final", "ensemble2_kfac_head"]
    assert not ensembles["default"].any() and not ensembles["chosen"].any()
    assert ((table["lds"] >= -1) & (table["lds"] <= 1)).all()
    assert ((table["ci_low"] <= table["lds"]) & (table["lds"] <= table["ci_high"])).all()
    assert (table["n_subsets"] == 8).all()
    test = pd.read_parquet(evaluated / "results/v1/predictions/test.parquet")
    assert (table["n_test"] == len(test)).all()
    assert (table["n_mistakes"] == int((test["pred"] != test["label"]).sum())).all()
    per_test = pd.read_parquet(evaluated / "results/evaluation/lds_per_test.parquet")
    assert set(per_test["method"]) == set(table["method"])
    for name in ("lds.png", "removal.png", "summary.md"):
        assert (evaluated / "results/evaluation" / name).stat().st_size > 0


def test_the_ensembles_other_member_is_the_full_retrain_with_its_seed(evaluated):
    """Its factors are of eval_full_s1's checkpoints (their logits are what that checkpoint
    computes on the cached images), on the same training images as the reference's factors."""
    import torch

    from tracinflow.io.checkpoints import load_for_inference
    from tracinflow.io.common import version_split
    from tracinflow.io.factor_store import load_checkpoints
    from tracinflow.train.model import to_input

    factors = evaluated / "results/evaluation/factors"
    for epoch in ("002", "003"):
        member = load_checkpoints([str(factors / f"ensemble_s1/epoch_{epoch}/train")])[0]
        reference = load_checkpoints([str(factors / f"epoch_{epoch}/train")])[0]
        assert np.array_equal(member.idx, reference.idx)
        assert not np.allclose(member.logits, reference.logits)
    member = load_checkpoints([str(factors / "ensemble_s1/epoch_003/test")])[0]
    model, _, _, _ = load_for_inference(
        evaluated / "results/eval_full_s1/model/epoch_003.pt", 1, "cpu"
    )
    data = next((evaluated / "results/data").glob("*/manifest.parquet")).parent
    images, _, idx = version_split(
        pd.read_parquet(data / "manifest.parquet"), "test",
        evaluated / "results/eval_full_s1/train_set.parquet", data / "cache/test.npy",
    )  # fmt: skip
    assert np.array_equal(np.asarray(idx), np.asarray(member.idx))
    with torch.inference_mode():
        logits = model(to_input(torch.from_numpy(np.array(images[:16])), model.arch, "cpu"))
    assert np.allclose(logits.numpy(), np.asarray(member.logits)[:16], atol=1e-4)


def test_the_subset_retrains_train_on_seeded_halves_the_same_for_both_seeds(evaluated):
    reference = pd.read_parquet(evaluated / "results/v1/train_set.parquet")
    n = int((~reference["dropped"]).sum())
    kept = {}
    for subset in range(8):
        for seed in (0, 1):
            frame = pd.read_parquet(
                evaluated / f"results/eval_lds_{subset:03d}_s{seed}/train_set.parquet"
            )
            assert frame[["idx", "label"]].equals(reference[["idx", "label"]])
            kept[subset, seed] = frozenset(frame.loc[~frame["dropped"], "idx"])
            assert len(kept[subset, seed]) == int(np.floor(n / 2 + 0.5))
        assert kept[subset, 0] == kept[subset, 1]
    assert len({kept[subset, 0] for subset in range(8)}) == 8


def test_each_removal_retrain_drops_its_set_and_the_controls_match_it(evaluated):
    sets = evaluated / "results/evaluation/removal_sets"
    method = pd.read_csv(sets / "method_tracin_final_k1.csv")
    assert len(method) > 0
    counts = method["label"].value_counts().sort_index()
    for seed in (0, 1):
        random = pd.read_csv(sets / f"random_tracin_final_k1_s{seed}.csv")
        hardness = pd.read_csv(sets / f"hardness_tracin_final_k1_s{seed}.csv")
        for control in (random, hardness):
            assert control["label"].value_counts().sort_index().equals(counts)
        assert not set(hardness["idx"]) & set(method["idx"])
    assert len(pd.read_csv(sets / "loss_tracin_final_k1.csv")) == len(method)
    for selection in ("method", "loss"):
        for seed in (0, 1):
            name = f"{selection}_tracin_final_k1"
            frame = pd.read_parquet(
                evaluated / f"results/eval_rm_{selection}_tracin_final_k1_s{seed}/train_set.parquet"
            )
            dropped = set(frame.loc[frame["dropped"], "idx"])
            assert dropped == set(pd.read_csv(sets / f"{name}.csv")["idx"])
    table = pd.read_csv(evaluated / "results/evaluation/removal.csv")
    assert table["selection"].tolist() == ["method", "random", "hardness", "loss"]
    assert (table["removed"] == len(method)).all() and (table["seeds"] == 2).all()
    assert table.loc[1:, "method_minus_this_fixed"].notna().all()


def test_the_brittleness_test_removes_one_images_proponents_and_as_many_random_ones(evaluated):
    table = pd.read_csv(evaluated / "results/evaluation/brittleness.csv")
    assert table["selection"].tolist() == ["method", "random"]
    assert list(table.columns) == [
        "method", "selection", "test_idx", "smallest_k", "flipped_k1", "flipped_k3"
    ]  # fmt: skip
    sets = evaluated / "results/evaluation/removal_sets"
    for k in (1, 3):
        method = pd.read_csv(sets / f"brittle_method_tracin_final_t0_k{k}.csv")
        random = pd.read_csv(sets / f"brittle_random_tracin_final_t0_k{k}.csv")
        assert 0 < len(method) <= k and len(random) == len(method)
        assert (
            random["label"]
            .value_counts()
            .sort_index()
            .equals(method["label"].value_counts().sort_index())
        )
    test = pd.read_parquet(evaluated / "results/v1/predictions/test.parquet").set_index("idx")
    idx = int(table["test_idx"].iloc[0])
    assert test.loc[idx, "pred"] == test.loc[idx, "label"]  # a correctly predicted image
    assert "## Brittleness" in (evaluated / "results/evaluation/summary.md").read_text()


def test_the_evaluation_is_in_the_html_report(evaluated):
    report = evaluated / "report.html"
    run_snakemake(evaluated, "--report", str(report))
    html = report.read_text(errors="replace")
    for name in ("Evaluation", "lds.csv", "lds.png", "removal.csv", "brittleness.csv"):
        assert name in html, name


def test_a_second_run_does_nothing_and_one_more_subset_retrains_that_subset_alone(evaluated):
    dry = run_snakemake(evaluated, "-n", "--cores", "2")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    config = write_config(evaluated, evaluation_config(subsets=9), name="nine.yaml")
    dry = run_snakemake(evaluated, "-n", "--cores", "2", "--configfile", str(config))
    output = dry.stdout + dry.stderr
    # the stamp records the new versions' folders
    assert planned_jobs(output) == {
        "build_train_set": 2, "train_model": 2, "predict": 2, "lds": 1, "evaluation_summary": 1,
        "results_stamp": 1, "all": 1,
    }, output[-3000:]  # fmt: skip
    assert "eval_lds_008_s0" in output and "eval_lds_008_s1" in output
