"""The field's peers on the same retrains as `make evaluate`: Captum, Kronfluence (EK-FAC), TRAK.

    make bench-peers                       # make evaluate first, then this: 20-35 min on 2 CPU cores
    python benchmarks/bench_peers.py --skip trak   # rows of the same name are replaced

Every score matrix, ours and the peers', is judged by the same code as the lds rule
(``tracinflow.stages.evaluation.lds_problem``): the same 32 subsets x 2 seeds of retrains, the same
test images, the mean true-label margin of the retrains as the target, the same bootstrap CI and
selection half. The peers see the same model and images as ours: the reference's checkpoint files
(read with ``weights_only=True``), the workflow's uint8 cache normalised by ``to_input``, the
reference's training set in the order of its factor files and the test images in the order of
lds.csv's.

* **Ours**: ``tracin_final`` and ``kfac_head`` recomputed from the factor files (summed over every
  checkpoint traced; with ``training.stage1.checkpoint_epochs`` also as ``_stage2``, the 3 stage-2
  checkpoints the peers see); they must equal their rows of results/evaluation/lds.csv (checked: the benchmark's LDS is the workflow's), and
  dattri 0.3.0's ``dattri.metric.lds`` of the same scores, subsets and targets must give the same
  LDS (checked to 1e-9: our metric is the field's).
* **Captum** 0.9.0, ``TracInCPFast`` on the final layer over the reference's 3 checkpoints (the
  same TracIn as ``tracin_final`` but for the bias, which Captum does not trace).
* **Kronfluence** 1.0.1, ``strategy="ekfac"`` (its default Fisher from sampled labels, damping
  ``None``: its heuristic of 0.1 x the mean eigenvalue, the rule ours follows), at the final
  checkpoint, tracking the head's three Linear layers (``fc.0``, ``fc.2``, ``fc.4``, the layers
  ``kfac_head`` traces) and the final layer alone; the training loss is the checkpoint's own
  (``loss_from_checkpoint``), the measurement the test image's loss at its label (what ours score)
  and, as in Kronfluence's and TRAK's examples, minus its margin.
* **TRAK** 0.3.2 (``BasicProjector`` on the CPU, float32, projection dimension 1024, gradients of
  the head's parameters, ``image_classification``'s margin output), one model per checkpoint of the
  reference's run (epochs 1-3) ensembled, the final checkpoint alone, and (with
  ``evaluation.ensemble``) TRAK's own ensembling: the final checkpoints of the reference and of its
  training set retrained with the ensemble's seeds, beside ours of the same models
  (``ensemble<models>_kfac_head``, checked against lds.csv).

Time is wall-clock on this machine, each peer from its model and images to its score matrix
(ours: from the factor files, whose extraction the workflow did; its time is in
results/benchmarks/). Prints one markdown table and writes it with the rows to
results/evaluation/peers.csv (replacing the rows of the same name, so ``--skip`` reruns some).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tracinflow._util.files import write_csv  # noqa: E402
from tracinflow.analysis.markdown import markdown_table  # noqa: E402
from tracinflow.config import ensemble_name, load_schema, with_defaults  # noqa: E402
from tracinflow.influence.methods import ensemble_scores, method_scores  # noqa: E402
from tracinflow.io.checkpoints import load_checkpoint  # noqa: E402
from tracinflow.io.common import version_split  # noqa: E402
from tracinflow.stages.evaluation import ensemble_members, lds_problem  # noqa: E402
from tracinflow.train.loss import loss_from_checkpoint  # noqa: E402
from tracinflow.train.model import to_input  # noqa: E402

HEAD = ["fc.0", "fc.2", "fc.4"]


def factors_dir(tree: Path) -> Path:
    return tree / "results/evaluation/factors"


def traced(folder: Path, split: str) -> list[str]:
    """A model's factor folders of ``split`` in the workflow's order: stage 1's checkpoints (where
    traced), then stage 2's."""
    return [str(p) for pattern in (f"stage1_epoch_*/{split}", f"epoch_*/{split}")
            for p in sorted(folder.glob(pattern))]  # fmt: skip


def lds_inputs(tree: Path, reference: str) -> tuple[dict, list]:
    """The lds rule's inputs and retrains, from the evaluation's folders."""
    retrains, train_sets, predictions = [], [], []
    for folder in sorted(tree.glob("results/eval_lds_*_s*")):
        subset, seed = folder.name.removeprefix("eval_lds_").split("_s")
        retrains.append((int(subset), int(seed)))
        train_sets.append(str(folder / "train_set.parquet"))
        predictions.append(str(folder / "predictions/test.parquet"))
    factors = factors_dir(tree)
    inputs = {
        "train": traced(factors, "train"),
        "test": traced(factors, "test"),
        # by member, then checkpoint
        "ensemble_train": [
            p for m in sorted(factors.glob("ensemble_s*")) for p in traced(m, "train")
        ],
        "ensemble_test": [
            p for m in sorted(factors.glob("ensemble_s*")) for p in traced(m, "test")
        ],
        "reference_test": str(tree / f"results/{reference}/predictions/test.parquet"),
        "train_sets": train_sets,
        "predictions": predictions,
    }
    return inputs, retrains


def images(tree: Path, reference: str, split: str, idx: np.ndarray, arch: dict):
    """Normalised images and labels of ``split`` as the reference sees it, in the order ``idx``."""
    data = next((tree / "results/data").glob("*/manifest.parquet")).parent
    manifest = pd.read_parquet(data / "manifest.parquet")
    train_set = tree / f"results/{reference}/train_set.parquet"
    pixels, labels, order = version_split(manifest, split, train_set, data / f"cache/{split}.npy")
    position = pd.Series(np.arange(len(order)), index=order).loc[idx].to_numpy()
    x = to_input(torch.from_numpy(np.asarray(pixels[position])), arch, "cpu")
    return x, torch.as_tensor(labels[position])


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TRAK's and Kronfluence's margin: the label's logit minus the log-sum-exp of the others."""
    rows = torch.arange(len(labels))
    others = logits.clone()
    others[rows, labels] = -torch.inf
    return logits[rows, labels] - others.logsumexp(dim=-1)


def kronfluence_scores(model, loss_fn, train, test, modules, measurement, workdir) -> np.ndarray:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return loss_fn(logits, y, reduction="none").sum()

        def compute_measurement(self, batch, model):
            x, y = batch
            logits = model(x)
            if measurement == "loss":
                return loss_fn(logits, y, reduction="none").sum()
            return -margin(logits, y).sum()

        def get_influence_tracked_modules(self):
            return list(modules)

    task = Classification()
    torch.manual_seed(0)  # the Fisher's sampled labels
    model = prepare_model(model, task)
    analyzer = Analyzer("peers", model=model, task=task, cpu=True, disable_tqdm=True,
                        output_dir=str(workdir))  # fmt: skip
    train_data = torch.utils.data.TensorDataset(*train)
    test_data = torch.utils.data.TensorDataset(*test)
    name = "-".join(modules)
    analyzer.fit_all_factors(name, dataset=train_data, per_device_batch_size=128,
                             factor_args=FactorArguments(strategy="ekfac"),
                             overwrite_output_dir=True)  # fmt: skip
    analyzer.compute_pairwise_scores(f"{name}-{measurement}", factors_name=name,
                                     query_dataset=test_data, train_dataset=train_data,
                                     per_device_query_batch_size=len(test[1]),
                                     per_device_train_batch_size=200,
                                     score_args=ScoreArguments(damping_factor=None),
                                     overwrite_output_dir=True)  # fmt: skip
    scores = analyzer.load_pairwise_scores(f"{name}-{measurement}")["all_modules"]
    return scores.double().numpy()


def trak_scores(checkpoints, train, test, workdir) -> np.ndarray:
    from trak import TRAKer
    from trak.projectors import BasicProjector

    params = [f"{layer}.{kind}" for layer in HEAD for kind in ("weight", "bias")]
    model, _ = load_checkpoint(checkpoints[-1])
    model.eval()
    size = sum(p.numel() for name, p in model.named_parameters() if name in params)
    projector = BasicProjector(grad_dim=size, proj_dim=1024, seed=0, proj_type="normal",
                               device="cpu", dtype=torch.float32)  # fmt: skip
    traker = TRAKer(model=model, task="image_classification", train_set_size=len(train[1]),
                    save_dir=str(workdir), device="cpu", projector=projector, proj_dim=1024,
                    use_half_precision=False, grad_wrt=params)  # fmt: skip
    for model_id, path in enumerate(checkpoints):
        state, _ = load_checkpoint(path)
        traker.load_checkpoint(state.state_dict(), model_id=model_id)
        for start in range(0, len(train[1]), 128):
            batch = [t[start : start + 128] for t in train]
            traker.featurize(batch=batch, num_samples=len(batch[1]))
    traker.finalize_features()
    for model_id, path in enumerate(checkpoints):
        state, _ = load_checkpoint(path)
        traker.start_scoring_checkpoint(exp_name="lds", checkpoint=state.state_dict(),
                                        model_id=model_id, num_targets=len(test[1]))  # fmt: skip
        for start in range(0, len(test[1]), 256):
            batch = [t[start : start + 256] for t in test]
            traker.score(batch=batch, num_samples=len(batch[1]))
    scores = traker.finalize_scores(exp_name="lds")  # (train, test)
    return np.asarray(scores, dtype=np.float64).T


def captum_scores(checkpoints, train, test) -> np.ndarray:
    """Captum's ``TracInCPFast`` on the final layer (``fc.4``'s weights: Captum does not trace its
    bias) over the reference's checkpoints with their learning rates, the training set as one
    batch: dense scores (test, train), what bench_captum.py times against ours."""
    from bench_captum import captum_loss, checkpoint_loader
    from captum.influence import TracInCPFast

    paths = [str(p) for p in checkpoints]
    model, checkpoint = load_checkpoint(paths[-1])
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)  # Captum enables the layer it traces
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*train), batch_size=len(train[1])
    )
    tracin = TracInCPFast(model, model.fc[4], loader, paths, checkpoint_loader(paths),
                          loss_fn=captum_loss(checkpoint["loss"]))  # fmt: skip
    return tracin.influence(tuple(test)).double().numpy()


def dattri_lds(problem, scores: np.ndarray) -> float:
    """dattri 0.3.0's LDS (``dattri.metric.lds``: the Spearman correlation per test image of the
    scores summed over each subset's training images with the target) of the same scores,
    subsets and targets, averaged over the test images as ours is."""
    from dattri.metric import lds

    indices = torch.as_tensor(np.stack([np.flatnonzero(mask) for mask in problem.masks]))
    target = torch.as_tensor(problem.actual.T)  # (subsets, test images)
    correlations, _ = lds(torch.as_tensor(np.asarray(scores, np.float64).T), (target, indices))
    return float(np.nanmean(correlations.numpy()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=".", help="the folder `make evaluate` ran in")
    parser.add_argument("--config", default="config/evaluate.yaml")
    parser.add_argument("--reference", default="reference")
    parser.add_argument("--skip", nargs="*", default=[], help="rows to leave out, by name prefix")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tree = Path(args.tree)
    config = yaml.safe_load((ROOT / args.config).read_text())
    schema = load_schema(ROOT / "workflow/schemas/config.schema.yaml")
    lds = with_defaults(config["evaluation"], schema["properties"]["evaluation"])["lds"]
    inputs, retrains = lds_inputs(tree, args.reference)
    problem = lds_problem(inputs, {"lds": lds, "retrains": retrains})
    published = pd.read_csv(tree / "results/evaluation/lds.csv").set_index("method")
    rows, per_test = [], []

    out = tree / "results/evaluation/peers.csv"

    def judge(name, scores, took):
        rows.append({**problem.row(name, scores, per_test), "seconds": took})
        print(f"{name}: LDS {rows[-1]['lds']:+.3f} [{rows[-1]['ci_low']:+.3f}, "
              f"{rows[-1]['ci_high']:+.3f}] in {took:.1f} s", flush=True)  # fmt: skip
        # each row as it comes (a long run keeps what it has), replacing an earlier run's row of
        # the same name and keeping the others (a run with --skip updates its own rows)
        earlier = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=["method"])
        fresh = pd.DataFrame(rows)
        earlier = earlier[~earlier["method"].isin(fresh["method"])]
        write_csv(out, pd.concat([earlier, fresh], ignore_index=True))

    def wanted(name):
        return not any(name.startswith(prefix) for prefix in args.skip)

    # with stage-1 checkpoints traced, the plain rows sum over the whole run and the _stage2 rows
    # over the 3 stage-2 checkpoints the peers see
    stage2 = [f"{name}_stage2" for name in ("tracin_final", "kfac_head")]
    for name in ("tracin_final", "kfac_head", *[n for n in stage2 if n in published.index]):
        started = time.perf_counter()
        scores = method_scores(name, problem.test, problem.train)
        judge(name, scores, time.perf_counter() - started)
        if abs(rows[-1]["lds"] - published.loc[name, "lds"]) > 1e-9:
            raise SystemExit(f"{name}: LDS {rows[-1]['lds']} here, {published.loc[name, 'lds']} "
                             f"in lds.csv: the benchmark does not judge as the workflow does")  # fmt: skip
        theirs = dattri_lds(problem, scores)
        print(f"{name}: dattri's LDS of the same scores {theirs:+.12f}, ours "
              f"{rows[-1]['lds']:+.12f}")  # fmt: skip
        if abs(theirs - rows[-1]["lds"]) > 1e-9:
            raise SystemExit(f"{name}: dattri's LDS {theirs} differs from ours {rows[-1]['lds']}")
    # TRAK's ensembling, ours: the evaluation's ensemble rows, recomputed from the factor files
    seeds = [
        int(p.name.removeprefix("ensemble_s"))
        for p in sorted(factors_dir(tree).glob("ensemble_s*"))
    ]
    members = ensemble_members(inputs, seeds, problem) if seeds else []
    for name in ("kfac_head",) if members else ():
        started = time.perf_counter()
        scores = ensemble_scores(name, [(problem.test, problem.train), *members])
        name = ensemble_name(name, 1 + len(members))
        judge(name, scores, time.perf_counter() - started)
        if abs(rows[-1]["lds"] - published.loc[name, "lds"]) > 1e-9:
            raise SystemExit(f"{name}: LDS {rows[-1]['lds']} here, {published.loc[name, 'lds']} "
                             f"in lds.csv")  # fmt: skip
    checkpoints = sorted((tree / f"results/{args.reference}/model").glob("epoch_*.pt"))
    model, checkpoint = load_checkpoint(checkpoints[-1])
    model.eval()
    loss_fn = loss_from_checkpoint(checkpoint)
    train = images(tree, args.reference, "train", problem.train[0].idx, model.arch)
    test = images(tree, args.reference, "test", problem.test_idx, model.arch)
    name = f"captum_tracincp_fast_final ({len(checkpoints)} checkpoints)"
    if wanted(name):
        started = time.perf_counter()
        judge(name, captum_scores(checkpoints, train, test), time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as workdir:
        for modules, measurement in ((HEAD, "loss"), (HEAD, "margin"), (["fc.4"], "loss")):
            name = f"kronfluence_ekfac_{'head' if modules == HEAD else 'final'} ({measurement})"
            if not wanted(name):
                continue
            model, _ = load_checkpoint(checkpoints[-1])
            model.eval()
            started = time.perf_counter()
            scores = kronfluence_scores(model, loss_fn, train, test, modules, measurement, workdir)
            judge(name, scores, time.perf_counter() - started)
        # TRAK's own ensembling: its models, the final checkpoints of the ensemble's models (the
        # reference and its whole training set retrained with each seed), beside the reference's
        # run's checkpoints and its final one alone
        models = [checkpoints[-1], *(tree / f"results/eval_full_s{seed}/model" / checkpoints[-1].name
                                     for seed in seeds)]  # fmt: skip
        for name, chosen in ((f"trak_head ({len(checkpoints)} checkpoints)", checkpoints),
                             ("trak_head (1 checkpoints)", checkpoints[-1:]),
                             (f"trak_head ({len(models)} models)", models if seeds else [])):  # fmt: skip
            if not chosen or not wanted(name):
                continue
            started = time.perf_counter()
            folder = Path(workdir) / f"trak-{len(chosen)}-{name.split()[-1].rstrip(')')}"
            scores = trak_scores(chosen, train, test, folder)
            judge(name, scores, time.perf_counter() - started)
    table = pd.DataFrame(rows)
    columns = ["method", "lds", "ci_low", "ci_high", "lds_held_out", "lds_mistakes", "seconds"]
    print(markdown_table(table[columns].round(3)))
    print(f"\n(written to {out})")


if __name__ == "__main__":
    main()
