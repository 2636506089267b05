"""The curvature-aware methods run by the workflow (influence.method kfac and gauss_newton): the
shards' merged top-k from the factor files equals the top-k of an independent dense computation of
the same method (tracinflow.influence.methods), and changing the method or the damping reruns
exactly the curvature and the shards; a version averaging its model's scores with another seed's
(influence.ensemble) equals the mean of both models' dense scores."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from snakemake_runs import planned_jobs, run_snakemake, tiny_config, write_config

from tracinflow.influence.methods import ensemble_scores, method_scores
from tracinflow.io.factor_store import load_checkpoints

pytestmark = pytest.mark.workflow

VERSIONS = {
    # K-FAC over every head layer, an uneven shard grid
    "k": {"influence": {"method": "kfac", "layers": "head", "shards": {"test": 2, "train": 3}}},
    # the final layer's exact Gauss-Newton influence
    "g": {"influence": {"method": "gauss_newton", "shards": {"test": 1, "train": 2}}},
    # k's recipe with another seed, its scores averaged with k's model (TRAK's ensembling)
    "k1": {
        "seed": 1,
        "influence": {
            "method": "kfac",
            "layers": "head",
            "ensemble": ["k"],
            "shards": {"test": 2, "train": 3},
        },
    },
}


def config() -> dict:
    return {**tiny_config(), "versions": copy.deepcopy(VERSIONS)}


@pytest.fixture(scope="module")
def curvature_workflow(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("curvature-workflow")
    write_config(workdir, config())
    targets = [f"results/{v}/influence/top_k_influences.parquet" for v in VERSIONS]
    run_snakemake(workdir, "--cores", "2", *targets)
    return workdir


def dense_topk(scores: np.ndarray, test_idx, train_idx, k: int) -> pd.DataFrame:
    """Per test row, the k largest positive (proponents) and most negative (opponents) scores,
    ties by the lower train idx: the kernel's rule (docs/math.md)."""
    rows = []
    for t, row in enumerate(scores):
        for kind, order in (("proponent", np.lexsort((train_idx, -row))),
                            ("opponent", np.lexsort((train_idx, row)))):  # fmt: skip
            signed = [j for j in order[:k] if (row[j] > 0 if kind == "proponent" else row[j] < 0)]
            for rank, j in enumerate(signed, start=1):
                rows.append((int(test_idx[t]), kind, rank, int(train_idx[j]), float(row[j])))
    return pd.DataFrame(rows, columns=["test_idx", "kind", "rank", "train_idx", "influence"])


def float64_factors(out):
    """A version's test and train factors, in float64 from the float32 files: the method's
    definition on the same factors."""
    folders = {
        split: sorted((out / "factors").glob(f"epoch_*/{split}")) for split in ("test", "train")
    }
    test, train = (load_checkpoints(folders[s]) for s in ("test", "train"))
    for side in (*test, *train):
        side.act = {k: np.asarray(v, np.float64) for k, v in side.act.items()}
        side.err = {k: np.asarray(v, np.float64) for k, v in side.err.items()}
    return test, train


@pytest.mark.parametrize(
    "version, name, members",
    [("k", "kfac_head", ["k"]), ("g", "gn_final", ["g"]), ("k1", "kfac_head", ["k1", "k"])],
)
def test_the_shards_top_k_equals_a_dense_recomputation_of_the_method(
    curvature_workflow, version, name, members
):
    out = curvature_workflow / "results" / version
    models = [float64_factors(curvature_workflow / "results" / m) for m in members]
    test, train = models[0]
    scores = ensemble_scores(name, models) if len(models) > 1 else method_scores(name, test, train)
    expected = dense_topk(scores, test[0].idx, train[0].idx, 5)
    got = pd.read_parquet(out / "influence/top_k_influences.parquet")
    got = got[["test_idx", "kind", "rank", "train_idx", "influence"]].astype({"kind": str})
    got = got.sort_values(["test_idx", "kind", "rank"]).reset_index(drop=True)
    expected = expected.sort_values(["test_idx", "kind", "rank"]).reset_index(drop=True)
    # the lists agree wherever a score is not within float32 rounding of the next one
    scale = np.abs(scores).max()
    same = (got["train_idx"] == expected["train_idx"]).mean()
    assert same > 0.98, same
    np.testing.assert_allclose(got["influence"], expected["influence"], rtol=1e-4,
                               atol=1e-5 * scale)  # fmt: skip
    assert (out / "influence/curvature.npz").exists()
    if len(members) > 1:  # the ensemble's lists are not its own model's alone
        own = dense_topk(method_scores(name, test, train), test[0].idx, train[0].idx, 5)
        own = own.sort_values(["test_idx", "kind", "rank"]).reset_index(drop=True)
        assert (got["train_idx"] == own["train_idx"]).mean() < 0.9


def test_a_new_damping_reruns_the_curvature_and_the_shards_alone(curvature_workflow):
    changed = config()
    for version in ("k", "k1"):  # an ensemble's members keep one recipe
        changed["versions"][version]["influence"]["damping"] = 0.5
    write_config(curvature_workflow, changed)
    try:
        run = run_snakemake(
            curvature_workflow, "-n", "results/k/influence/top_k_influences.parquet"
        )
        assert planned_jobs(run.stdout) == {"curvature": 1, "influence_shard": 6, "merge_topk": 1}
    finally:
        write_config(curvature_workflow, config())
