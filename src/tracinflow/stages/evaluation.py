"""The evaluation rules: evaluation_factors, ensemble_factors, lds, removal_set, removal,
evaluation_summary.

Each function takes its rule's ``inputs``, ``outputs`` and ``params`` (mappings by the names the
rule gives them), its ``threads`` and a ``log`` function; it reads the reference's factors and the
retrained versions' predictions, calls the analysis package, and writes every output atomically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from tracinflow._util.files import save_figure, write_csv, write_parquet, write_text
from tracinflow._util.progress import Progress
from tracinflow.analysis.evaluation import (
    LDS_COLUMNS,
    LDS_DETAIL_COLUMNS,
    bootstrap_lds,
    brittleness_sample,
    brittleness_table,
    ceiling_lds,
    chosen_method,
    hardness_matched,
    highest_loss,
    label_matched_random,
    lds_row,
    proponents_union,
    random_scores,
    removal_outcome,
    removal_table,
    selection_half,
    spearman_rows,
    subset_masks,
    subset_predictions,
)
from tracinflow.analysis.evaluation_text import evaluation_summary_markdown
from tracinflow.config import ensemble_name
from tracinflow.influence.methods import (
    available_methods,
    damping_variants,
    ensemble_scores,
    method_scores,
)
from tracinflow.io.common import optional_input, per_member
from tracinflow.io.factor_store import extract_checkpoint_factors, load_checkpoints
from tracinflow.plots.evaluation import plot_lds, plot_removal

PER_TEST_COLUMNS = ["method", "test_idx", "mispredicted", "spearman"]


def evaluation_factors(inputs, outputs, params, threads=1, log=print):
    """The reference's factors for the evaluation: every head layer of one checkpoint on one side
    (``params["split"]``, at ``params["target"]``), as the extract_factors rule traces them
    (:func:`~tracinflow.io.factor_store.extract_checkpoint_factors`), into the evaluation's own
    folder."""
    return extract_checkpoint_factors(inputs, outputs, params, threads, log)


def ensemble_factors(inputs, outputs, params, threads=1, log=print):
    """The factors of one of the ensemble's other members (the reference's training set retrained
    with another seed) the way :func:`evaluation_factors` traces the reference's: every head layer
    of one checkpoint on one side, at the label."""
    return extract_checkpoint_factors(inputs, outputs, params, threads, log)


# --- lds ---------------------------------------------------------------------------------------------


def _test_sample(n_test: int, settings: dict) -> np.ndarray:
    """Positions of the test images whose margins are predicted: all, or a seeded sample."""
    wanted = settings["test_images"]
    if wanted is None or wanted >= n_test:
        return np.arange(n_test)
    rng = np.random.default_rng(settings["seed"])
    return np.sort(rng.choice(n_test, size=wanted, replace=False))


def _margins(paths, test_idx: np.ndarray) -> np.ndarray:
    """Each retrain's true-label margins of the test images ``test_idx``: (T, len(paths))."""
    columns = []
    for path in paths:
        frame = pd.read_parquet(path, columns=["idx", "margin"]).set_index("idx")
        columns.append(frame["margin"].reindex(test_idx).to_numpy(np.float64))
    margins = np.column_stack(columns)
    if np.isnan(margins).any():
        raise ValueError("a retrain's test predictions lack some sampled test images")
    return margins


def _retrain_grid(retrains, train_sets, predictions):
    """``(subsets, seeds, {seed: [(subset, train set path, predictions path)]})`` of the LDS retrains
    (``retrains``: (subset, seed) per version, aligned with its files)."""
    subsets = list(dict.fromkeys(m for m, _ in retrains))
    seeds = list(dict.fromkeys(s for _, s in retrains))
    by_seed = {s: {} for s in seeds}
    for (m, s), train_set, prediction in zip(retrains, train_sets, predictions, strict=True):
        by_seed[s][m] = (train_set, prediction)
    return subsets, seeds, by_seed


def _subset_masks(subsets, seeds, by_seed, train_idx) -> np.ndarray:
    """(M, N) masks of the subsets, from the first seed's training sets; every seed's retrain of a
    subset must train on the same images."""
    frames = {
        f"subset {m}, seed {s}": pd.read_parquet(by_seed[s][m][0], columns=["idx", "dropped"])
        for s in seeds
        for m in subsets
    }
    masks = subset_masks(frames, train_idx)
    per_seed = masks.reshape(len(seeds), len(subsets), -1)
    if not (per_seed == per_seed[0]).all():
        raise ValueError("the retrains of one subset with different seeds train on other images")
    return per_seed[0]


def _held_out(row, predicted, actual, correlations, halves, settings) -> dict:
    """``row`` with the LDS on the selection half of the test images (``lds_selection``) and on
    the other half with its bootstrap CI (``lds_held_out``, ``held_out_ci_low/high``)."""
    row["lds_selection"] = float(np.nanmean(correlations[halves]))
    rows = np.tile(~halves, len(predicted) // len(halves))  # the ceiling stacks pairs of seeds
    held_out = bootstrap_lds(predicted[rows], actual[rows], settings["bootstrap"], settings["seed"])
    row["lds_held_out"], row["held_out_ci_low"], row["held_out_ci_high"] = held_out
    return row


def _method_row(name, scores, masks, actual, mistakes, halves, settings, n_test, default,
                per_test, kind):  # fmt: skip
    predicted = subset_predictions(scores, masks)
    values = bootstrap_lds(predicted, actual, settings["bootstrap"], settings["seed"])
    correlations = spearman_rows(predicted, actual)
    row = lds_row(name, values, masks.shape[0], n_test, default=name == default, kind=kind)
    row["lds_mistakes"] = (
        float(np.nanmean(correlations[mistakes])) if mistakes.any() else float("nan")
    )
    row["n_mistakes"] = int(mistakes.sum())
    per_test.append(correlations)
    return _held_out(row, predicted, actual, correlations, halves, settings)


def _ceiling_row(margins_by_seed, mistakes, halves, settings, per_test) -> dict:
    """The retraining-noise ceiling: each seed's retrained margins as the prediction of every
    other seed's; a test image's correlation is its mean over the ordered pairs of seeds."""
    predicted, target = ceiling_lds(margins_by_seed)
    value = bootstrap_lds(predicted, target, settings["bootstrap"], settings["seed"])
    n_subsets, n_test = margins_by_seed[0].shape[1], len(mistakes)
    row = lds_row("ceiling", value, n_subsets, n_test, kind="ceiling")
    correlations = np.nanmean(spearman_rows(predicted, target).reshape(-1, n_test), axis=0)
    row["lds_mistakes"] = float(np.nanmean(correlations[mistakes])) if mistakes.any() else np.nan
    row["n_mistakes"] = int(mistakes.sum())
    per_test.append(correlations)
    return _held_out(row, predicted, target, correlations, halves, settings)


def _scored_methods(named, train) -> list[str]:
    """The methods named, or every one the factors form and the curvature methods' damping
    sensitivity rows."""
    if named:
        return list(named)
    stage2 = [int(f.meta["epoch"]) for f in train if f.stage == 2]
    methods = available_methods(train[0].layers, stage2, trajectory=len(stage2) < len(train))
    return methods + damping_variants(methods)


@dataclass
class LdsProblem:
    """What every method's LDS is computed against: the reference's factors (``train``, and
    ``test`` at the sampled test images ``test_idx``), which of them it mispredicts, the subsets'
    masks (M, N), each seed's retrained margins (T, M), their mean ``actual`` and the selection
    half of the test images."""

    train: list
    test: list
    test_idx: np.ndarray
    mistakes: np.ndarray
    masks: np.ndarray
    margins: dict
    actual: np.ndarray
    halves: np.ndarray
    settings: dict

    def row(self, name, scores, per_test: list, default=None, kind="method") -> dict:
        """lds.csv's row of ``scores`` (T, N), its per-test correlations appended to ``per_test``."""
        return _method_row(name, scores, self.masks, self.actual, self.mistakes, self.halves,
                           self.settings, len(self.test_idx), default, per_test, kind)  # fmt: skip


def lds_problem(inputs, params) -> LdsProblem:
    """:class:`LdsProblem` of the lds rule's ``inputs`` and ``params`` (also what
    benchmarks/bench_peers.py scores the peers' attributions against)."""
    settings = params["lds"]
    train = load_checkpoints(list(inputs["train"]))
    test_all = load_checkpoints(list(inputs["test"]))
    test = [f.take(_test_sample(len(test_all[0]), settings)) for f in test_all]
    test_idx = np.asarray(test[0].idx, dtype=np.int64)
    reference = pd.read_parquet(inputs["reference_test"], columns=["idx", "label", "pred"])
    reference = reference.set_index("idx").loc[test_idx]
    subsets, seeds, by_seed = _retrain_grid(
        [tuple(r) for r in params["retrains"]], inputs["train_sets"], inputs["predictions"]
    )
    margins = {s: _margins([by_seed[s][m][1] for m in subsets], test_idx) for s in seeds}
    return LdsProblem(
        train=train,
        test=test,
        test_idx=test_idx,
        mistakes=(reference["pred"] != reference["label"]).to_numpy(),
        masks=_subset_masks(subsets, seeds, by_seed, train[0].idx),
        margins=margins,
        actual=np.mean(list(margins.values()), axis=0),
        halves=selection_half(len(test_idx), settings["seed"]),
        settings=settings,
    )


def ensemble_members(inputs, seeds, problem: LdsProblem) -> list[tuple[list, list]]:
    """(test, train) factors of each other member of the ensemble (``inputs["ensemble_test"]`` and
    ``["ensemble_train"]``, by seed then epoch), their rows in the order of ``problem``'s."""
    members = []
    trains = per_member(inputs["ensemble_train"], len(seeds))
    tests = per_member(inputs["ensemble_test"], len(seeds))
    for seed, train_dirs, test_dirs in zip(seeds, trains, tests, strict=True):
        train = load_checkpoints(train_dirs)
        if not np.array_equal(np.asarray(train[0].idx), np.asarray(problem.train[0].idx)):
            raise ValueError(
                f"{train_dirs[0]}: the ensemble member (seed {seed}) was trained on other images "
                f"than the reference; its members differ only in their seed"
            )
        test = load_checkpoints(test_dirs)
        rows = pd.Series(np.arange(len(test[0])), index=np.asarray(test[0].idx))
        members.append(([f.take(rows.loc[problem.test_idx].to_numpy()) for f in test], train))
    return members


def lds(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """lds.csv: the LDS (with its 95% bootstrap CI, and over the reference's mispredicted sampled
    test images) of every method, of random scores and of the retraining-noise ceiling; the
    per-test Spearman correlations; the plot. ``params``: ``retrains`` ((subset, seed) of each
    LDS version, the order of the inputs ``train_sets`` and ``predictions``), ``methods`` (None:
    every one the factors form, and the curvature methods at a tenth and ten times their damping),
    ``default``, the ``lds`` settings and the ``ensemble`` (``seeds`` of its other members, whose
    factors are ``inputs["ensemble_train"]`` and ``["ensemble_test"]``, and the ``methods`` averaged
    over them and the reference: rows ``ensemble<models>_<method>``)."""
    torch.set_num_threads(threads)
    problem = lds_problem(inputs, params)
    n_test, n_train = len(problem.test_idx), len(problem.train[0])
    methods = _scored_methods(params["methods"], problem.train)
    log(f"LDS over {problem.masks.shape[0]} subsets x {len(problem.margins)} seeds, {n_test} test "
        f"images ({int(problem.mistakes.sum())} mispredicted by the reference), {n_train} "
        f"training images, {len(methods)} methods")  # fmt: skip
    rows, per_test = [], []
    progress = Progress(len(methods) + 2, "lds", "methods", log=log)
    for name in methods:
        scores = method_scores(name, problem.test, problem.train)
        rows.append(problem.row(name, scores, per_test, params["default"]))
        progress.update(message=f"{name}: LDS {rows[-1]['lds']:+.3f} "
                                f"[{rows[-1]['ci_low']:+.3f}, {rows[-1]['ci_high']:+.3f}]")  # fmt: skip
    ensemble = params.get("ensemble") or {}
    if ensemble.get("seeds"):
        members = ensemble_members(inputs, ensemble["seeds"], problem)
        for name in ensemble["methods"]:
            scores = ensemble_scores(name, [(problem.test, problem.train), *members])
            row_name = ensemble_name(name, 1 + len(members))
            rows.append(problem.row(row_name, scores, per_test, kind="ensemble"))
            methods.append(row_name)
            log(f"{row_name}: LDS {rows[-1]['lds']:+.3f} "
                f"[{rows[-1]['ci_low']:+.3f}, {rows[-1]['ci_high']:+.3f}]")  # fmt: skip
    noise = random_scores((n_test, n_train), problem.settings["seed"])
    rows.append(problem.row("random", noise, per_test, kind="random"))
    progress.update(message=f"random: LDS {rows[-1]['lds']:+.3f}")
    names = [*methods, "random"]
    if len(problem.margins) >= 2:
        rows.append(_ceiling_row(list(problem.margins.values()), problem.mistakes, problem.halves,
                                 problem.settings, per_test))  # fmt: skip
        names.append("ceiling")
        progress.update(message=f"ceiling (one retrain predicting another): {rows[-1]['lds']:+.3f}")
    table = pd.DataFrame(rows, columns=[*LDS_COLUMNS, *LDS_DETAIL_COLUMNS])
    table["chosen"] = table["method"] == chosen_method(table)
    per_test_frame = pd.DataFrame(
        {
            "method": np.repeat(names, n_test),
            "test_idx": np.tile(problem.test_idx, len(names)),
            "mispredicted": np.tile(problem.mistakes, len(names)),
            "spearman": np.concatenate(per_test),
        },
        columns=PER_TEST_COLUMNS,
    )
    write_parquet(outputs["per_test"], per_test_frame)
    save_figure(plot_lds(table), outputs["plot"])
    write_csv(outputs["table"], table)
    return table


# --- removal_set -------------------------------------------------------------------------------------


def _targets(inputs, spec) -> tuple[list, np.ndarray, str]:
    """The test factors a removal set is scored from and the positions of its test images: the
    reference's mispredicted test images at their prediction (the removal test), or one sampled
    correctly predicted test image at its label (the brittleness test, ``spec["test"]``)."""
    reference = pd.read_parquet(inputs["reference_test"], columns=["idx", "label", "pred"])
    if spec.get("test") is None:
        test = load_checkpoints(list(inputs["test"]))
        wrong = reference.loc[reference["pred"] != reference["label"], "idx"]
        return test, np.flatnonzero(np.isin(test[0].idx, wrong.to_numpy())), "mispredicted"
    test = load_checkpoints(list(inputs["test_label"]))
    chosen = brittleness_sample(reference, spec["test_images"], spec["sample_seed"])
    position = np.flatnonzero(np.asarray(test[0].idx) == chosen[spec["test"]])
    return test, position, f"correctly predicted (idx {chosen[spec['test']]})"


def removal_set(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """One removal set (``params["spec"]``: selection, method, k, seed, and ``test`` for the
    brittleness test): the union of the top-k proponents under the method of the reference's
    mispredicted test images at their predicted label (input ``test``), or of one sampled correctly
    predicted test image at its label (input ``test_label``); or as many images by a control
    (label-matched random, hardness-matched by the reference's training loss, highest loss)."""
    torch.set_num_threads(threads)
    spec = params["spec"]
    train = load_checkpoints(list(inputs["train"]))
    test, positions, which = _targets(inputs, spec)
    train_idx = np.asarray(train[0].idx, dtype=np.int64)
    scores = method_scores(spec["method"], [f.take(positions) for f in test], train)
    removed = proponents_union(scores, train_idx, int(spec["k"]))
    log(f"{spec['method']}, k={spec['k']}: {len(removed)} distinct proponents of the "
        f"{len(positions)} {which} test images")  # fmt: skip
    labels = np.asarray(train[0].labels, dtype=np.int64)
    selection = spec["selection"]
    if selection in ("hardness", "loss"):
        losses = pd.read_parquet(inputs["reference_train"], columns=["idx", "loss"])
        losses = losses.set_index("idx")["loss"].reindex(train_idx).to_numpy(np.float64)
    if selection == "random":
        removed = label_matched_random(removed, train_idx, labels, int(spec["seed"]))
    elif selection == "hardness":
        removed = hardness_matched(removed, train_idx, labels, losses, int(spec["seed"]))
    elif selection == "loss":
        removed = highest_loss(len(removed), train_idx, losses)
    elif selection != "method":
        raise ValueError(f"unknown removal selection {selection!r}")
    label_of = dict(zip(train_idx.tolist(), labels.tolist(), strict=True))
    frame = pd.DataFrame({"idx": removed, "label": [label_of[int(i)] for i in removed]})
    log(f"{selection}: {len(frame)} images, label counts {frame['label'].value_counts().to_dict()}")
    write_csv(outputs["removal"], frame)
    return frame


# --- removal ------------------------------------------------------------------------------------------


def _test_outcomes(path, idx: np.ndarray) -> pd.DataFrame:
    frame = pd.read_parquet(path, columns=["idx", "pred", "margin"]).set_index("idx")
    return frame.reindex(idx)


def removal(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """removal.csv and its plot: each removal retrain (``params["removals"]``: set, selection,
    method, k, seed; the order of the inputs ``removed`` and ``sets``) against the full retrain of
    its seed (``params["full_seeds"]``, the order of the inputs ``full``), on the reference's
    mispredicted test images."""
    reference = pd.read_parquet(inputs["reference_test"], columns=["idx", "label", "pred"])
    reference = reference.sort_values("idx")
    idx = reference["idx"].to_numpy(np.int64)
    group = (reference["pred"] != reference["label"]).to_numpy()
    label = reference["label"].to_numpy()
    full = {
        seed: _test_outcomes(path, idx)
        for seed, path in zip(params["full_seeds"], inputs["full"], strict=True)
    }
    rows = []
    for spec, path, set_path in zip(params["removals"], inputs["removed"], inputs["sets"],
                                    strict=True):  # fmt: skip
        removed, base = _test_outcomes(path, idx), full[spec["seed"]]
        outcome = removal_outcome(group, label, base["pred"], base["margin"], removed["pred"],
                                  removed["margin"])  # fmt: skip
        rows.append({**{k: spec[k] for k in ("method", "k", "selection", "seed")},
                     "removed": len(pd.read_csv(set_path)), **outcome})  # fmt: skip
        log(f"{spec['selection']} {spec['method']} k={spec['k']} seed {spec['seed']}: "
            f"{rows[-1]['removed']} removed, mistakes fixed {outcome['fixed']:+.3f}, margin "
            f"{outcome['margin']:+.3f}, rest accuracy {outcome['rest_accuracy']:+.3f}")  # fmt: skip
    table = removal_table(pd.DataFrame(rows))
    save_figure(plot_removal(table), outputs["plot"])
    write_csv(outputs["table"], table)
    return table


# --- brittleness ----------------------------------------------------------------------------------


def brittleness(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """brittleness.csv: for each sampled correctly predicted test image and selection (the method's
    top-k proponents at its label, or as many random images with the same labels), whether each
    k's removal flipped its prediction (against the reference, the same seed's full model), and
    the smallest k that did (:func:`~tracinflow.analysis.evaluation.brittleness_table`)."""
    reference = pd.read_parquet(inputs["reference_test"], columns=["idx", "label", "pred"])
    chosen = None
    rows = []
    for spec, path in zip(params["removals"], inputs["removed"], strict=True):
        if chosen is None:
            chosen = brittleness_sample(reference, spec["test_images"], spec["sample_seed"])
        idx = int(chosen[spec["test"]])
        pred = pd.read_parquet(path, columns=["idx", "pred"]).set_index("idx").loc[idx, "pred"]
        label = int(reference.set_index("idx").loc[idx, "label"])
        rows.append({"method": spec["method"], "selection": spec["selection"], "test_idx": idx,
                     "k": int(spec["k"]), "flipped": bool(pred != label)})  # fmt: skip
        log(f"{spec['selection']} k={spec['k']} test {idx}: "
            f"{'flipped' if rows[-1]['flipped'] else 'kept'}")  # fmt: skip
    table = brittleness_table(pd.DataFrame(rows))
    write_csv(outputs["table"], table)
    return table


# --- evaluation_summary --------------------------------------------------------------------------


def evaluation_summary(inputs, outputs, params, threads=1, log=print) -> str:
    """summary.md: both tables, with the settings and a reading of them."""
    brittle = optional_input(inputs, "brittleness")
    text = evaluation_summary_markdown(
        pd.read_csv(inputs["lds"]),
        pd.read_csv(inputs["removal"]),
        pd.read_csv(brittle) if brittle else None,
        reference=params["reference"],
        evaluation=params["evaluation"],
        default=params["default"],
    )
    write_text(outputs["summary"], text)
    log(f"wrote {outputs['summary']}")
    return text
