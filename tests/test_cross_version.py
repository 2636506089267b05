"""Cross-version comparison on hand-made versions whose answers are known: persistent mistakes,
consistent influencers, shared mislabel suspects, statistics, confused pairs, the registry, the
plots, the summary and the files."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tracinflow._util.files import save_figure
from tracinflow.analysis.cross_version import (
    CANDIDATE_COLUMNS,
    INFLUENCER_COLUMNS,
    PAIR_COLUMNS,
    PERFORMANCE_COLUMNS,
    PERSISTENT_COLUMNS,
    STATISTICS_COLUMNS,
    cleaning_per_version,
    confused_pairs,
    consistent_influencers,
    influence_statistics,
    performance_table,
    persistent_mispredictions,
    shared_mislabel_candidates,
    train_set_fingerprint,
    version_registry,
)
from tracinflow.analysis.cross_version_text import summary_markdown
from tracinflow.analysis.markdown import markdown_table
from tracinflow.plots.cross_version import plot_influence_statistics, plot_performance
from tracinflow.stages.versions import cross_version

CLASSES = ["Cat", "Dog", "Fox"]
TRAIN_IDX = np.arange(9)
TRAIN_LABEL = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
VAL_IDX = np.array([20, 21, 22])
TEST_IDX = np.array([100, 101, 102, 103, 104, 105])
TEST_LABEL = np.array([0, 0, 1, 1, 2, 2])
# 103 is wrong in all three versions, 101 in v1 and v2 only, 105 in v3 only.
TEST_PRED = {
    "v1": [0, 1, 1, 0, 2, 2],
    "v2": [0, 2, 1, 0, 2, 2],
    "v3": [0, 0, 1, 0, 2, 1],
}
# (test_idx, kind, rank, train_idx, influence). Summed per training image:
# v1: 0 -> +5, 1 -> +4, 2 -> +1, 3 -> -6, 4 -> -1;  v2: 0 -> +6, 2 -> +3, 1 -> +0.5, 3 -> -2, 5 -> -4
# so with top = 2 the helpful lists are {0, 1} and {0, 2}, the harmful ones {3, 4} and {5, 3}.
TOPK_ROWS = {
    "v1": [
        (100, "proponent", 1, 0, 3.0),
        (101, "proponent", 1, 0, 2.0),
        (100, "proponent", 2, 1, 4.0),
        (101, "proponent", 2, 2, 1.0),
        (100, "opponent", 1, 3, -6.0),
        (101, "opponent", 1, 4, -1.0),
    ],
    "v2": [
        (100, "proponent", 1, 0, 6.0),
        (101, "proponent", 1, 2, 3.0),
        (101, "proponent", 2, 1, 0.5),
        (100, "opponent", 1, 5, -4.0),
        (101, "opponent", 1, 3, -2.0),
    ],
    "v3": [
        (100, "proponent", 1, 6, 2.0),
        (100, "opponent", 1, 7, -1.0),
    ],
}
# Inspection order (rank 1 first). With top = 3: v1 lists {4, 1, 7}, v2 {1, 4, 8}; 7 is rank 4 in v2.
INSPECTION_ORDER = {"v1": [4, 1, 7, 2, 0], "v2": [1, 4, 8, 7, 0], "v3": [6, 5, 0, 3, 2]}


def make_manifest() -> pd.DataFrame:
    parts = [
        (TRAIN_IDX, TRAIN_LABEL, "train"),
        (VAL_IDX, np.array([0, 1, 2]), "val"),
        (TEST_IDX, TEST_LABEL, "test"),
    ]
    rows = [
        {
            "idx": int(i),
            "path": f"{CLASSES[label]}/img_{i:03d}.png",
            "class": CLASSES[label],
            "label": int(label),
            "split": split,
        }
        for idx, labels, split in parts
        for i, label in zip(idx, labels, strict=True)
    ]
    return pd.DataFrame(rows)


def make_predictions(preds) -> pd.DataFrame:
    preds = np.asarray(preds, dtype=np.int64)
    probs = np.eye(len(CLASSES))[preds] * 0.8 + 0.2 / len(CLASSES)
    return pd.DataFrame(
        {
            "idx": TEST_IDX,
            "label": TEST_LABEL,
            "pred": preds,
            "confidence": probs.max(axis=1),
            "loss": np.where(preds == TEST_LABEL, 0.2, 1.5),
            "probs": probs.tolist(),
        }
    )


def make_topk(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["test_idx", "kind", "rank", "train_idx", "influence"])


def make_inspection(order, manifest: pd.DataFrame) -> pd.DataFrame:
    paths = manifest.set_index("idx")
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1),
            "train_idx": order,
            "ranking": "self_influence",
            "suspicion": np.linspace(9.0, 1.0, len(order)),
            "self_influence": np.linspace(9.0, 1.0, len(order)),
            "loss": 1.0,
            "true_label": paths.loc[order, "class"].to_numpy(),
            "predicted_label": "Cat",
            "confidence": 0.5,
            "image_path": paths.loc[order, "path"].to_numpy(),
        }
    )


def make_train_set(relabel: dict | None = None, drop=()) -> pd.DataFrame:
    label = TRAIN_LABEL.copy()
    for idx, new in (relabel or {}).items():
        label[TRAIN_IDX == idx] = new
    return pd.DataFrame(
        {
            "idx": TRAIN_IDX,
            "label": label,
            "original_label": TRAIN_LABEL,
            "noisy": label != TRAIN_LABEL,
            "dropped": np.isin(TRAIN_IDX, list(drop)),
        }
    )


def make_metrics(preds, val_accuracy: float, val_loss: float) -> dict:
    preds = np.asarray(preds)
    cm = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    np.add.at(cm, (TEST_LABEL, preds), 1)
    test = make_predictions(preds)
    return {
        "train": {"accuracy": 0.9, "loss": 0.3, "n": len(TRAIN_IDX)},
        "val": {"accuracy": val_accuracy, "loss": val_loss, "n": len(VAL_IDX)},
        "test": {
            "accuracy": float((preds == TEST_LABEL).mean()),
            "loss": float(test["loss"].mean()),
            "n": len(TEST_IDX),
        },
        "per_class": {c: {"precision": 1, "recall": 1, "f1": 1, "support": 2} for c in CLASSES},
        "confusion_matrix": cm.tolist(),
    }


# The cross_version rule's outputs and each version's inputs, by the names the rules give them.
FILES = {
    "performance": "performance.csv",
    "persistent": "persistent_mispredictions.csv",
    "influencers": "consistent_influencers.csv",
    "candidates": "shared_mislabel_candidates.csv",
    "statistics": "influence_statistics.csv",
    "pairs": "confused_pairs.csv",
    "cleaning": "cleaning.csv",
    "registry": "version_registry.json",
    "performance_plot": "performance.png",
    "statistics_plot": "influence_statistics.png",
    "summary": "summary.md",
}
VERSION_FILES = {
    "metrics": "metrics.json",
    "test_predictions": "predictions/test.parquet",
    "topk": "influence/top_k_influences.parquet",
    "inspection": "reports/mislabeled_inspection_report.csv",
    "train_set": "train_set.parquet",
    "checkpoints": "model/checkpoints.json",
    "best_model": "model/best.pt",
}


def write_cross_version(*, versions, manifest_path, out_dir, min_versions, top=50, log):
    """The cross_version rule's function on version folders (``{name: {"settings", "dir"}}``), its
    outputs in ``out_dir`` under the rule's names; returns ``{file name: path}``."""
    inputs = {
        key: [Path(entry["dir"]) / relative for entry in versions.values()]
        for key, relative in VERSION_FILES.items()
    }
    inputs["manifest"] = manifest_path
    outputs = {key: Path(out_dir) / name for key, name in FILES.items()}
    params = {
        "versions": list(versions),
        "settings": {name: entry["settings"] for name, entry in versions.items()},
        "min_versions": min_versions,
        "top": top,
    }
    cross_version(inputs, outputs, params, log=log)
    return {path.name: path for path in outputs.values()}


TRAIN_SETS = {"v1": {}, "v2": {"relabel": {2: 1}}, "v3": {"drop": [8]}}
VAL = {"v1": (0.7, 0.8), "v2": (0.6, 0.9), "v3": (1.0 / 3.0, 1.2)}
TRAINED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def write_version(root, name: str, manifest: pd.DataFrame):
    """``root/<name>/`` with every file a version's results folder holds."""
    directory = root / name
    for relative in VERSION_FILES.values():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(make_metrics(TEST_PRED[name], *VAL[name])))
    make_predictions(TEST_PRED[name]).to_parquet(directory / "predictions/test.parquet")
    make_topk(TOPK_ROWS[name]).to_parquet(directory / "influence/top_k_influences.parquet")
    make_inspection(INSPECTION_ORDER[name], manifest).to_csv(
        directory / "reports/mislabeled_inspection_report.csv", index=False
    )
    make_train_set(**TRAIN_SETS[name]).to_parquet(directory / "train_set.parquet")
    checkpoints = [
        {"epoch": e, "file": f"epoch_{e:03d}.pt", "lr_head": 1e-3, "lr_backbone": 1e-4}
        | {"val_loss": 1.0 / e}
        for e in (2, 4)
    ]
    (directory / "model/checkpoints.json").write_text(json.dumps(checkpoints))
    best = directory / "model/best.pt"
    best.write_bytes(b"weights")
    os.utime(best, (TRAINED.timestamp(), TRAINED.timestamp()))
    return directory


@pytest.fixture
def manifest():
    return make_manifest()


@pytest.fixture
def results(tmp_path, manifest):
    """Three versions' results folders and the manifest file."""
    manifest_path = tmp_path / "manifest.parquet"
    manifest.to_parquet(manifest_path)
    versions = {
        name: {
            "settings": {"seed": i, "name": name},
            "dir": write_version(tmp_path, name, manifest),
        }
        for i, name in enumerate(("v1", "v2", "v3"))
    }
    return versions, manifest_path


def predictions_of(*names):
    return {name: make_predictions(TEST_PRED[name]) for name in names}


# --------------------------------------------------------------------------------------------------
# tables


def test_performance_table_numbers_and_counts():
    names = ("v1", "v2", "v3")
    metrics = {n: make_metrics(TEST_PRED[n], *VAL[n]) for n in names}
    train_sets = {n: make_train_set(**TRAIN_SETS[n]) for n in names}
    table = performance_table(metrics, predictions_of(*names), train_sets)
    assert list(table.columns) == PERFORMANCE_COLUMNS
    assert table["version"].tolist() == list(names)
    assert table["test_mispredictions"].tolist() == [2, 2, 2]
    assert np.allclose(table["test_accuracy"], [4 / 6, 4 / 6, 4 / 6])
    assert np.allclose(table["val_accuracy"], [0.7, 0.6, 1 / 3])
    assert np.allclose(table["val_loss"], [0.8, 0.9, 1.2])
    assert table["train_images"].tolist() == [9, 9, 8]
    assert table["flipped"].tolist() == [0, 1, 0]
    assert table["dropped"].tolist() == [0, 0, 1]

    without = performance_table(metrics, predictions_of(*names))
    assert without["train_images"].isna().all() and without["dropped"].isna().all()


def test_persistent_mispredictions_counts_versions(manifest):
    predictions = predictions_of("v1", "v2", "v3")
    two = persistent_mispredictions(predictions, manifest, CLASSES, min_versions=2)
    assert list(two.columns) == PERSISTENT_COLUMNS
    assert two["test_idx"].tolist() == [103, 101]
    assert two["versions_wrong"].tolist() == [3, 2]
    assert two["n_versions"].tolist() == [3, 3]
    row = two.set_index("test_idx").loc[101]
    assert row["true_label"] == "Cat"
    assert row["image_path"] == "Cat/img_101.png"
    assert row["predictions"] == "v1:Dog; v2:Fox; v3:Cat"

    three = persistent_mispredictions(predictions, manifest, CLASSES, min_versions=3)
    assert three["test_idx"].tolist() == [103]
    one = persistent_mispredictions(predictions, manifest, CLASSES, min_versions=1)
    assert one["test_idx"].tolist() == [103, 101, 105]


def test_persistent_mispredictions_rejects_too_many_versions_and_other_test_sets(manifest):
    predictions = predictions_of("v1", "v2")
    with pytest.raises(ValueError, match=r"min_versions \(3\).*versions \(2\)"):
        persistent_mispredictions(predictions, manifest, CLASSES, min_versions=3)
    predictions["v2"] = predictions["v2"].iloc[1:]
    with pytest.raises(ValueError, match="same test set"):
        persistent_mispredictions(predictions, manifest, CLASSES, min_versions=1)


def test_consistent_influencers_need_the_top_list_of_several_versions(manifest):
    topk = {name: make_topk(TOPK_ROWS[name]) for name in ("v1", "v2")}
    table = consistent_influencers(topk, manifest, CLASSES, top=2, min_versions=2)
    assert list(table.columns) == INFLUENCER_COLUMNS
    # 0 is helpful and 3 harmful in both; 1 (v1 only), 2 (v2 only), 4 and 5 are in one list each.
    assert table[["train_idx", "kind"]].values.tolist() == [[0, "helpful"], [3, "harmful"]]
    helpful = table.iloc[0]
    assert helpful["versions"] == 2
    assert helpful["version_list"] == "v1; v2"
    assert helpful["mean_influence_sum"] == pytest.approx(5.5)
    assert helpful["class"] == "Cat" and helpful["image_path"] == "Cat/img_000.png"
    assert table.iloc[1]["mean_influence_sum"] == pytest.approx(-4.0)
    assert table.iloc[1]["class"] == "Dog"

    # With three places 1 and 2 make both helpful lists too; largest mean sum first (2.25 > 2).
    wider = consistent_influencers(topk, manifest, CLASSES, top=3, min_versions=2)
    helpful = wider[wider["kind"] == "helpful"]
    assert helpful["train_idx"].tolist() == [0, 1, 2]
    assert helpful["mean_influence_sum"].tolist() == pytest.approx([5.5, 2.25, 2.0])
    single = consistent_influencers(topk, manifest, CLASSES, top=2, min_versions=1)
    assert sorted(single.loc[single["kind"] == "helpful", "train_idx"]) == [0, 1, 2]
    assert sorted(single.loc[single["kind"] == "harmful", "train_idx"]) == [3, 4, 5]


def test_shared_mislabel_candidates(manifest):
    inspections = {n: make_inspection(INSPECTION_ORDER[n], manifest) for n in ("v1", "v2", "v3")}
    table = shared_mislabel_candidates(inspections, manifest, top=3, min_versions=2)
    assert list(table.columns) == CANDIDATE_COLUMNS
    assert table["train_idx"].tolist() == [1, 4]
    assert table["best_rank"].tolist() == [1, 1]
    assert table["mean_rank"].tolist() == [1.5, 1.5]
    assert table["version_list"].tolist() == ["v1; v2", "v1; v2"]
    assert table["true_label"].tolist() == ["Cat", "Dog"]
    assert table["image_path"].tolist() == ["Cat/img_001.png", "Dog/img_004.png"]

    # One place more brings in 7 (v1 rank 3, v2 rank 4); only five places list 0 everywhere.
    wider = shared_mislabel_candidates(inspections, manifest, top=4, min_versions=2)
    assert wider["train_idx"].tolist() == [1, 4, 7]
    assert wider.iloc[2]["mean_rank"] == 3.5
    everyone = shared_mislabel_candidates(inspections, manifest, top=5, min_versions=3)
    assert everyone["train_idx"].tolist() == [0]
    assert everyone.iloc[0]["versions"] == 3


def test_influence_statistics_equal_numpy():
    rng = np.random.default_rng(3)
    topk = {}
    for name, n in (("a", 40), ("b", 25)):
        kind = np.where(rng.random(n) < 0.5, "proponent", "opponent")
        values = np.where(kind == "proponent", 1, -1) * rng.exponential(2.0, n)
        topk[name] = pd.DataFrame({"kind": kind, "influence": values})
    table = influence_statistics(topk)
    assert list(table.columns) == STATISTICS_COLUMNS
    assert table[["version", "kind"]].values.tolist() == [
        [v, k] for v in ("a", "b") for k in ("all", "proponent", "opponent")
    ]
    for row in table.itertuples():
        frame = topk[row.version]
        values = frame["influence"].to_numpy()
        if row.kind != "all":
            values = values[frame["kind"].to_numpy() == row.kind]
        assert row.count == len(values)
        assert row.mean == pytest.approx(np.mean(values))
        assert row.median == pytest.approx(np.median(values))
        assert row.min == np.min(values) and row.max == np.max(values)
        assert row.std == pytest.approx(np.std(values))

    only_helpful = influence_statistics(
        {"c": pd.DataFrame({"kind": ["proponent"], "influence": [1]})}
    )
    opponent = only_helpful.set_index("kind").loc["opponent"]
    assert opponent["count"] == 0 and np.isnan(opponent["mean"])


def test_confused_pairs_from_planted_matrices():
    metrics = {
        "v1": {"confusion_matrix": [[5, 3, 0], [1, 4, 2], [0, 0, 6]]},
        "v2": {"confusion_matrix": [[5, 1, 0], [1, 4, 0], [4, 0, 6]]},
    }
    table = confused_pairs(metrics, CLASSES, top=10)
    assert list(table.columns) == PAIR_COLUMNS
    rows = table[["version", "true_class", "predicted_class", "count"]].values.tolist()
    assert rows == [
        ["all", "Cat", "Dog", 4],
        ["all", "Fox", "Cat", 4],
        ["all", "Dog", "Cat", 2],
        ["all", "Dog", "Fox", 2],
        ["v1", "Cat", "Dog", 3],
        ["v1", "Dog", "Fox", 2],
        ["v1", "Dog", "Cat", 1],
        ["v2", "Fox", "Cat", 4],
        ["v2", "Cat", "Dog", 1],
        ["v2", "Dog", "Cat", 1],
    ]
    capped = confused_pairs(metrics, CLASSES, top=1)
    assert capped["count"].tolist() == [4, 3, 4]
    with pytest.raises(ValueError, match="shape"):
        confused_pairs({"v1": {"confusion_matrix": [[1, 2], [3, 4]]}}, CLASSES)


def test_cleaning_per_version_names_the_ranking_or_the_marks_file():
    source = pd.DataFrame(
        {
            "idx": [0, 1, 2, 3],
            "label": [1, 0, 1, 1],
            "original_label": [0, 0, 1, 1],
            "noisy": [True, False, False, False],
            "dropped": False,
        }
    )
    by_list = source.assign(dropped=[True, True, False, False])
    by_ranking = source.assign(dropped=[True, False, False, False])
    settings = {
        "noisy": {"clean": None},
        "cleaned": {"clean": {"from": "noisy", "ranking": "loss", "action": "drop"}},
        "marked": {
            "clean": {"from": "noisy", "list": "marks.csv", "ranking": None, "action": "drop"}
        },
    }
    accuracy = {"noisy": 0.7, "cleaned": 0.75, "marked": 0.8}
    metrics = {name: {"test": {"accuracy": a}} for name, a in accuracy.items()}
    train_sets = {"noisy": source, "cleaned": by_ranking, "marked": by_list}
    table = cleaning_per_version(settings, train_sets, metrics).set_index("version")
    assert table.at["cleaned", "ranking"] == "loss"
    assert table.at["marked", "ranking"] == "list marks.csv"
    assert table.at["marked", "acted_on"] == 2 and table.at["marked", "flips_removed"] == 1
    assert table.at["marked", "test_accuracy"] == 0.8


def test_registry_fingerprint_follows_the_training_data():
    base = make_train_set()
    assert train_set_fingerprint(base) == train_set_fingerprint(base.iloc[::-1])
    assert train_set_fingerprint(base) != train_set_fingerprint(make_train_set(relabel={2: 1}))
    assert train_set_fingerprint(base) != train_set_fingerprint(make_train_set(drop=[8]))
    # A dropped row's label never reaches training.
    assert train_set_fingerprint(make_train_set(drop=[8])) == train_set_fingerprint(
        make_train_set(relabel={8: 0}, drop=[8])
    )

    sets = {
        "a": base,
        "b": base.copy(),
        "c": make_train_set(relabel={2: 1}),
        "d": make_train_set(drop=[8]),
    }
    registry = version_registry(
        settings={name: {"seed": i} for i, name in enumerate(sets)},
        train_sets=sets,
        metrics={name: make_metrics(TEST_PRED["v1"], 0.5, 1.0) for name in sets},
        checkpoints={
            name: [{"epoch": 3, "file": "x.pt", "lr_head": 0.01, "lr_backbone": 0.001}]
            for name in sets
        },
        trained_at={name: "2024-01-02T03:04:05+00:00" for name in sets},
    )
    prints = {name: entry["train_set"]["fingerprint"] for name, entry in registry.items()}
    assert prints["a"] == prints["b"]
    assert len({prints["a"], prints["c"], prints["d"]}) == 3
    assert registry["c"]["train_set"] == {
        "fingerprint": prints["c"],
        "images": 9,
        "flipped": 1,
        "dropped": 0,
    }
    assert registry["d"]["train_set"]["images"] == 8 and registry["d"]["train_set"]["dropped"] == 1
    assert registry["a"]["settings"] == {"seed": 0}
    assert registry["a"]["checkpoints"] == [{"epoch": 3, "lr_head": 0.01, "lr_backbone": 0.001}]
    assert registry["a"]["metrics"]["val_accuracy"] == 0.5
    assert registry["a"]["metrics"]["test_accuracy"] == pytest.approx(4 / 6)
    json.dumps(registry, allow_nan=False)  # plain JSON throughout


# --------------------------------------------------------------------------------------------------
# plots and summary


def assert_png(path):
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 100 and image.height > 100


def test_plots_are_pngs(tmp_path):
    names = ("v1", "v2", "v3")
    metrics = {n: make_metrics(TEST_PRED[n], *VAL[n]) for n in names}
    performance = performance_table(metrics, predictions_of(*names))
    save_figure(plot_performance(performance), tmp_path / "performance.png")
    assert_png(tmp_path / "performance.png")
    statistics = influence_statistics({n: make_topk(TOPK_ROWS[n]) for n in names})
    # A kind without rows has no statistics: the plot leaves it out instead of failing.
    statistics.loc[(statistics["version"] == "v3") & (statistics["kind"] == "opponent"), "mean"] = (
        np.nan
    )
    save_figure(plot_influence_statistics(statistics), tmp_path / "stats.png")
    assert_png(tmp_path / "stats.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["performance.png", "stats.png"]


def test_markdown_table_escapes_and_formats():
    frame = pd.DataFrame(
        {"name": ["a|b", "c"], "value": [0.123456, np.nan], "n": pd.array([3, None], "Int64")}
    )
    assert markdown_table(frame).splitlines() == [
        "| name | value | n |",
        "| --- | ---: | ---: |",
        "| a\\|b | 0.1235 | 3 |",
        "| c |  |  |",
    ]


def test_summary_caps_long_tables(manifest):
    names = ("v1", "v2", "v3")
    metrics = {n: make_metrics(TEST_PRED[n], *VAL[n]) for n in names}
    predictions = predictions_of(*names)
    persistent = persistent_mispredictions(predictions, manifest, CLASSES, 1)
    empty = pd.DataFrame(columns=INFLUENCER_COLUMNS)
    text = summary_markdown(
        performance=performance_table(metrics, predictions),
        persistent=persistent,
        influencers=empty,
        candidates=pd.DataFrame(columns=CANDIDATE_COLUMNS),
        statistics=influence_statistics({n: make_topk(TOPK_ROWS[n]) for n in names}),
        pairs=confused_pairs(metrics, CLASSES),
        min_versions=1,
        top=5,
        files=FILES,
        max_rows=2,
    )
    assert "(1 more in persistent_mispredictions.csv)" in text
    assert "| 105 |" not in text and "| 101 |" in text
    assert "None." in text
    assert "3 test images were mispredicted by at least 1 of the 3 versions" in text


# --------------------------------------------------------------------------------------------------
# files


def markdown_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first table under ``## heading``."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_write_cross_version_writes_every_file(tmp_path, results):
    versions, manifest_path = results
    out = tmp_path / "cross"
    lines = []
    written = write_cross_version(
        versions=versions,
        manifest_path=manifest_path,
        out_dir=out,
        min_versions=2,
        top=2,
        log=lines.append,
    )
    assert sorted(written) == sorted(FILES.values())
    assert sorted(p.name for p in out.iterdir()) == sorted(
        FILES.values()
    )  # no temporary files left
    assert len(lines) == len(FILES)
    assert all(path.exists() and path.stat().st_size > 0 for path in written.values())
    assert_png(out / FILES["performance_plot"])
    assert_png(out / FILES["statistics_plot"])

    persistent = pd.read_csv(out / FILES["persistent"])
    assert persistent["test_idx"].tolist() == [103, 101]
    influencers = pd.read_csv(out / FILES["influencers"])
    assert influencers[["train_idx", "kind"]].values.tolist() == [[0, "helpful"], [3, "harmful"]]
    candidates = pd.read_csv(out / FILES["candidates"])
    assert candidates["train_idx"].tolist() == [1, 4]

    registry = json.loads((out / FILES["registry"]).read_text())
    assert list(registry) == ["v1", "v2", "v3"]
    assert registry["v2"]["settings"] == {"seed": 1, "name": "v2"}
    assert registry["v1"]["trained_at"] == "2024-05-06T07:08:09+00:00"
    assert registry["v2"]["train_set"]["flipped"] == 1
    assert registry["v1"]["train_set"]["fingerprint"] == train_set_fingerprint(make_train_set())

    performance = pd.read_csv(out / FILES["performance"])
    text = (out / FILES["summary"]).read_text()
    header, _rule, *rows = markdown_rows(text, "Performance")
    assert header == PERFORMANCE_COLUMNS
    assert len(rows) == len(performance)
    for cells, (_, expected) in zip(rows, performance.iterrows(), strict=True):
        assert cells[0] == expected["version"]
        for cell, column in zip(cells[1:], PERFORMANCE_COLUMNS[1:], strict=True):
            assert float(cell) == pytest.approx(expected[column], rel=1e-3), column
    assert "![Val and test accuracy per version](performance.png)" in text
    assert "](influence_statistics.png)" in text
    assert "Best by test accuracy (tied): v1, v2, v3" in text
    assert "2 test images were mispredicted by at least 2 of the 3 versions" in text


def test_write_cross_version_with_one_version(tmp_path, results):
    versions, manifest_path = results
    out = tmp_path / "single"
    lines = []
    write_cross_version(
        versions={"v3": versions["v3"]},
        manifest_path=manifest_path,
        out_dir=out,
        min_versions=2,
        top=2,
        log=lines.append,
    )
    assert any("min_versions 2" in line and "using 1" in line for line in lines)
    persistent = pd.read_csv(out / FILES["persistent"])
    assert persistent["test_idx"].tolist() == [103, 105]
    assert persistent["n_versions"].tolist() == [1, 1]
    influencers = pd.read_csv(out / FILES["influencers"])
    assert influencers[["train_idx", "kind"]].values.tolist() == [[6, "helpful"], [7, "harmful"]]
    assert pd.read_csv(out / FILES["candidates"])["train_idx"].tolist() == [6, 5]
    pairs = pd.read_csv(out / FILES["pairs"])
    assert set(pairs["version"]) == {"all", "v3"}
    assert "Best by test accuracy: v3" in (out / FILES["summary"]).read_text()


def test_write_cross_version_names_the_missing_file(tmp_path, results):
    versions, manifest_path = results
    (versions["v2"]["dir"] / "influence/top_k_influences.parquet").unlink()
    out = tmp_path / "cross"
    with pytest.raises(FileNotFoundError, match=re.escape("top_k_influences.parquet")) as error:
        write_cross_version(
            versions=versions, manifest_path=manifest_path, out_dir=out, min_versions=2, log=print
        )
    assert "'v2'" in str(error.value)
    assert not out.exists()  # checked before anything was written
