"""An experiment on make evaluate's retrains: score the test side by its margin instead of its loss.

    make evaluate                                     # first
    python benchmarks/margin_measurement.py           # about 3 minutes on 2 CPU cores

Every method in this project differentiates the test image's *loss* at its label (TracIn's
definition). The LDS, though, predicts the retrained *margin* (``log p_y - log(1 - p_y)``, the
``margin`` column), and the peers measure that: Kronfluence's and TRAK's examples differentiate
minus the margin ``z_y - logsumexp_{k != y} z_k``. This script extracts the reference's test
factors at every checkpoint with that measurement instead of the loss (same checkpoints, same
images, the same training factors and curvature) and scores TracIn, K-FAC and Gauss-Newton with
it, judged by the lds rule's own code. It is an experiment, not a workflow option (yet): it changes
no file the workflow reads. The measurement's error signal is checked against autograd first.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_peers import images, lds_inputs  # noqa: E402

from tracinflow.analysis.markdown import markdown_table  # noqa: E402
from tracinflow.config import load_schema, with_defaults  # noqa: E402
from tracinflow.influence.factors import extract_factors  # noqa: E402
from tracinflow.influence.methods import method_scores  # noqa: E402
from tracinflow.io.checkpoints import load_checkpoint  # noqa: E402
from tracinflow.stages.evaluation import lds_problem  # noqa: E402

METHODS = ["tracin_final", "tracin_head", "kfac_final", "kfac_head", "gn_final"]


class NegativeMargin(nn.Module):
    """``-(z_y - logsumexp_{k != y} z_k)`` per sample, as a PerSampleLoss (the measurement)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    @staticmethod
    def _others(logits, labels):
        masked = logits.clone()
        masked[torch.arange(len(labels)), labels.long()] = -torch.inf
        return masked

    def forward(self, logits, labels, reduction="mean"):
        rows = torch.arange(len(labels))
        value = self._others(logits, labels).logsumexp(-1) - logits[rows, labels.long()]
        return value if reduction == "none" else value.mean()

    def error_signal(self, logits, labels):
        """``d/dz``: the softmax over the other classes, minus 1 at the label."""
        grad = torch.softmax(self._others(logits, labels), dim=-1)
        grad[torch.arange(len(labels)), labels.long()] = -1.0
        return grad

    def settings(self):
        return {"loss": "negative_margin", "num_classes": self.num_classes,
                "label_smoothing": 0.0, "class_weights": None}  # fmt: skip


def check_error_signal(measurement: NegativeMargin) -> None:
    logits = torch.randn(7, measurement.num_classes, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(7) % measurement.num_classes
    (grad,) = torch.autograd.grad(measurement(logits, labels, reduction="none").sum(), logits)
    closed = measurement.error_signal(logits.detach(), labels)
    assert torch.allclose(grad, closed, atol=1e-12), (grad - closed).abs().max()


def main() -> None:
    torch.set_num_threads(2)
    tree = Path(".")
    config = yaml.safe_load((ROOT / "config/evaluate.yaml").read_text())
    schema = load_schema(ROOT / "workflow/schemas/config.schema.yaml")
    lds = with_defaults(config["evaluation"], schema["properties"]["evaluation"])["lds"]
    inputs, retrains = lds_inputs(tree, "reference")
    problem = lds_problem(inputs, {"lds": lds, "retrains": retrains})
    # the stage-2 checkpoints (where stage 1's are traced too, lds.csv's _stage2 rows)
    stage2 = [c for c, f in enumerate(problem.train) if f.stage == 2]
    traced_stage1 = len(stage2) < len(problem.train)
    problem = replace(problem, test=[problem.test[c] for c in stage2],
                      train=[problem.train[c] for c in stage2])  # fmt: skip
    published = pd.read_csv(tree / "results/evaluation/lds.csv").set_index("method")
    checkpoints = sorted((tree / "results/reference/model").glob("epoch_*.pt"))
    started = time.perf_counter()
    margin_test = []
    for path, stored in zip(checkpoints, problem.test, strict=True):
        model, _ = load_checkpoint(path)
        measurement = NegativeMargin(int(model.fc[4].out_features))
        check_error_signal(measurement)
        x, y = images(tree, "reference", "test", problem.test_idx, model.arch)
        idx = torch.as_tensor(problem.test_idx)
        loader = [(x[s : s + 256], y[s : s + 256], idx[s : s + 256]) for s in range(0, len(y), 256)]
        factors = extract_factors(model, loader, measurement, layers=("fc.0", "fc.2", "fc.4"),
                                  device="cpu")  # fmt: skip
        assert np.array_equal(factors.idx, stored.idx)
        # the loss side's activations are the same forward: only the error signal differs
        np.testing.assert_allclose(factors.act["fc.4"], stored.act["fc.4"], rtol=1e-4, atol=1e-5)
        margin_test.append(replace(factors, meta=dict(stored.meta)))
    extraction = time.perf_counter() - started
    rows, per_test = [], []
    for name in METHODS:
        for measurement, test in (("loss", problem.test), ("margin", margin_test)):
            scores = method_scores(name, test, problem.train)
            row = problem.row(name, scores, per_test)
            ref = f"{name}_stage2" if traced_stage1 else name
            if measurement == "loss" and abs(row["lds"] - published.loc[ref, "lds"]) > 1e-9:
                raise SystemExit(f"{name}: not lds.csv's LDS; the experiment is not judged alike")
            rows.append(
                {
                    "method": name,
                    "measurement": measurement,
                    **{
                        k: row[k]
                        for k in ("lds", "ci_low", "ci_high", "lds_held_out", "lds_mistakes")
                    },
                }
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows).round(3)
    print(f"\nmargin test factors of {len(problem.test_idx)} test images at {len(checkpoints)} "
          f"checkpoints extracted in {extraction:.0f} s\n")  # fmt: skip
    print(markdown_table(table))


if __name__ == "__main__":
    main()
