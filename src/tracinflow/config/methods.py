"""Attribution methods by name (``tracin_final``, ``kfac_head@0.01``, ``relatif_tracin_head``, ...):
the grammar of the names, a reader's label of each, and the method a version's own reports use.
:mod:`tracinflow.influence.methods` computes them; the config names them (``influence:``,
``evaluation.methods``), so a wrong name fails while the workflow is parsed."""

from __future__ import annotations

import re

from tracinflow.config.schema import ConfigError

#: the layer sets an attribution method may name (the head's Linear layers by module path)
LAYER_SETS = {"final": ("fc.4",), "head": ("fc.0", "fc.2", "fc.4")}
#: the forms of an attribution method's name (``<layers>`` one of LAYER_SETS; any but the cosine
#: may be prefixed ``relatif_``, and a curvature method suffixed ``@<damping>``). A plain name sums
#: over every checkpoint traced; ``_epoch_EEE`` takes one stage-2 checkpoint, ``_stage2`` the
#: stage-2 checkpoints alone (where stage-1 checkpoints are traced too).
METHOD_PATTERNS = (
    "tracin_<layers>", "tracin_<layers>_epoch_EEE", "tracin_<layers>_error",
    "tracin_<layers>_stage2", "kfac_<layers>", "kfac_<layers>_epoch_EEE", "kfac_<layers>_stage2",
    "gn_final", "gn_final_epoch_EEE", "gn_final_stage2", "cosine_<layers>",
)  # fmt: skip
_METHOD_NAME = re.compile(
    r"^(?P<kind>tracin|kfac|gn|cosine)_(?P<layers>[a-z]+)"
    r"(?:_epoch_(?P<epoch>\d{3})|_(?P<error>error)|_(?P<stage2>stage2))?"
    r"(?:@(?P<damping>[0-9.eE+-]+))?$"
)


def _method_error(name) -> ConfigError:
    return ConfigError(
        f"unknown attribution method {name!r}: the methods are {', '.join(METHOD_PATTERNS)}, "
        f"each but cosine_ also as relatif_<method>, with <layers> one of {', '.join(LAYER_SETS)} "
        f"(EEE a checkpoint's epoch; kfac_ and gn_ may end in @<damping>)"
    )


def parse_method(name: str) -> dict:
    """``{"kind", "layers", "epoch", "stage2_only", "error_only", "relative", "damping"}`` of an attribution
    method's name (tracinflow.influence.methods computes them), or a ConfigError saying the forms.
    ``kind``: tracin, kfac (K-FAC influence), gn (the final layer's exact Gauss-Newton influence)
    or cosine (of TracIn's gradients); ``relative``: RelatIF, divided by the square root of the
    training image's self-influence under the same method; ``damping``: None for the default."""
    name = str(name)
    relative = name.startswith("relatif_")
    match = _METHOD_NAME.match(name.removeprefix("relatif_"))
    if not match or match["layers"] not in LAYER_SETS:
        raise _method_error(name)
    kind = match["kind"]
    curvature = kind in ("kfac", "gn")
    invalid = (
        (kind == "gn" and match["layers"] != "final")
        or (match["error"] and kind != "tracin")
        or (kind == "cosine" and (match["epoch"] or match["stage2"] or relative))
        or (match["damping"] and not curvature)
    )
    if invalid:
        raise _method_error(name)
    try:
        damping = float(match["damping"]) if match["damping"] else None
    except ValueError:
        raise _method_error(name) from None
    if damping is not None and damping <= 0:
        raise _method_error(name)
    return {
        "kind": kind,
        "layers": LAYER_SETS[match["layers"]],
        "epoch": int(match["epoch"]) if match["epoch"] else None,
        "stage2_only": bool(match["stage2"]),
        "error_only": bool(match["error"]),
        "relative": relative,
        "damping": damping,
    }


_METHOD_KINDS = {"tracin": "TracIn", "kfac": "K-FAC influence", "gn": "Gauss-Newton influence",
                 "cosine": "TracIn cosine"}  # fmt: skip
_LAYER_WORDS = {"final": "the final layer", "head": "the head's Linear layers"}


def method_label(name: str, ensemble=()) -> str:
    """A reader's name of an attribution method, e.g. ``K-FAC influence over the head's Linear
    layers, summed over the checkpoints``; ``ensemble``: the other versions whose models' scores
    are averaged with it (influence.ensemble)."""
    spec = parse_method(name)
    kind = _METHOD_KINDS[spec["kind"]]
    layers = next(word for key, word in _LAYER_WORDS.items() if LAYER_SETS[key] == spec["layers"])
    text = f"{'RelatIF of ' if spec['relative'] else ''}{kind} over {layers}"
    if spec["error_only"]:
        text += " (error signal only)"
    text += (f", checkpoint of epoch {spec['epoch']}" if spec["epoch"] is not None
             else ", summed over the checkpoints")  # fmt: skip
    text += f", damping {spec['damping']:g}" if spec["damping"] else ""
    if ensemble:
        text += f", averaged over {1 + len(ensemble)} models (with {', '.join(ensemble)})"
    return text


#: the default damping of the curvature-aware methods: this fraction of a curvature matrix's
#: mean eigenvalue is added to its diagonal (influence.damping)
DEFAULT_DAMPING = 0.1
#: influence.method's values and the prefix of their names in the evaluation's grammar
METHOD_PREFIXES = {"tracin": "tracin", "kfac": "kfac", "gauss_newton": "gn"}


def default_method(layers, method: str = "tracin", damping: float = DEFAULT_DAMPING) -> str | None:
    """The attribution method a version's own reports use, by its name in :func:`parse_method`'s
    grammar: ``influence.method`` summed over the checkpoints over its ``influence.layers``
    (``tracin_final``, ``kfac_head``, ``gn_final``, with ``@<damping>`` when not the default);
    None when the layers are not one of LAYER_SETS."""
    layers = list(layers) if not isinstance(layers, str) else list(LAYER_SETS[layers])
    for set_name, needed in LAYER_SETS.items():
        if sorted(layers) == sorted(needed):
            name = f"{METHOD_PREFIXES[method]}_{set_name}"
            if method != "tracin" and float(damping) != DEFAULT_DAMPING:
                name += f"@{float(damping):g}"
            return name
    return None


def version_method(settings: dict) -> str | None:
    """:func:`default_method` of one version's resolved settings."""
    influence = settings["influence"]
    return default_method(influence["layers"], influence.get("method", "tracin"),
                          influence.get("damping", DEFAULT_DAMPING))  # fmt: skip
