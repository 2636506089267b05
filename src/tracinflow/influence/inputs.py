"""The checks every influence computation makes of its factors: one per checkpoint on each side,
the same layers, rows and learning rates, matching widths."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tracinflow.influence.factors import Factors

Checkpoints = Factors | Sequence[Factors]  # one Factors per checkpoint


def checkpoint_list(obj) -> list[Factors]:
    """One :class:`Factors` per checkpoint (a single Factors is one checkpoint)."""
    if isinstance(obj, Factors):
        return [obj]
    out = list(obj)
    if not out:
        raise ValueError("no checkpoints given")
    for item in out:
        if not isinstance(item, Factors):
            raise TypeError(
                f"expected Factors (one per checkpoint), got {type(item).__name__}; load a factor "
                "folder with tracinflow.load_factor_dir"
            )
    return out


def common_layers(sides: Sequence[list[Factors]], layers) -> list[str]:
    first = sides[0][0]
    layers = list(first.layers if layers is None else layers)
    if not layers:
        raise ValueError("no layers to score")
    for side in sides:
        for c, f in enumerate(side):
            missing = [layer for layer in layers if layer not in f.act]
            if missing:
                raise ValueError(
                    f"checkpoint {c}: layers {missing} missing; it has {list(f.layers)}"
                )
    return layers


def learning_rates(sides: Sequence[list[Factors]], lrs) -> list[float]:
    n = len(sides[0])
    if lrs is not None:
        lrs = [float(lr) for lr in lrs]
        if len(lrs) != n:
            raise ValueError(f"{len(lrs)} learning rates for {n} checkpoints")
        return lrs
    out = []
    for c in range(n):
        found = {side[c].lr for side in sides} - {None}
        if not found:
            raise ValueError(f"checkpoint {c}: no lr in its meta; pass lrs=")
        if len(found) > 1:
            raise ValueError(
                f"checkpoint {c}: test and train factors disagree on lr: {sorted(found)}"
            )
        out.append(found.pop())
    return out


def check_side(side: list[Factors], layers, name: str) -> None:
    first = side[0]
    for c, f in enumerate(side[1:], start=1):
        if f.row_offset != first.row_offset or not np.array_equal(f.idx, first.idx):
            raise ValueError(
                f"{name}: checkpoint {c} covers other rows than checkpoint 0 (idx differ)"
            )
    for c, f in enumerate(side):
        for layer in layers:
            a, e = f.act[layer], f.err[layer]
            if a.ndim != 2 or e.ndim != 2 or a.shape[0] != len(f) or e.shape[0] != len(f):
                raise ValueError(
                    f"{name}: checkpoint {c} layer {layer}: bad shapes {a.shape}, {e.shape}"
                )


def check_pair(test: list[Factors], train: list[Factors], layers) -> None:
    if len(test) != len(train):
        raise ValueError(f"{len(test)} test checkpoints but {len(train)} train checkpoints")
    for c, (ft, fr) in enumerate(zip(test, train, strict=True)):
        for layer in layers:
            if ft.has_bias[layer] != fr.has_bias[layer]:
                raise ValueError(f"checkpoint {c} layer {layer}: has_bias differs between splits")
            if (ft.act[layer].shape[1], ft.err[layer].shape[1]) != (
                fr.act[layer].shape[1],
                fr.err[layer].shape[1],
            ):
                raise ValueError(
                    f"checkpoint {c} layer {layer}: factor widths differ between splits"
                )
        et, er = ft.meta.get("epoch"), fr.meta.get("epoch")
        st, sr = ft.stage, fr.stage
        if et is not None and er is not None and (st, et) != (sr, er):
            raise ValueError(
                f"checkpoint {c}: test factors of stage {st} epoch {et}, train factors of stage "
                f"{sr} epoch {er}"
            )
