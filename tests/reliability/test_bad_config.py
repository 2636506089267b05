"""Bad config: every mistake is a ConfigError naming the deepest key that is wrong and what it should be.

The cases are generated from workflow/schemas/config.schema.yaml itself (every key it defines, through
the optional blocks such as label_noise and clean and into lists), applied to the demo config
(config/config.yaml) at the top level or as a version's override, and checked with the functions the
workflow calls while it parses (``version_settings``, ``check_version_links``).
"""

from __future__ import annotations

import copy
import itertools
import re

import jsonschema
import pytest
import yaml
from conftest import REPO
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tracinflow.config import (
    GLOBAL_ONLY_KEYS,
    SHARED_CHECKPOINT_KEYS,
    ConfigError,
    check_version_links,
    load_schema,
    version_settings,
)

SCHEMA = load_schema(REPO / "workflow/schemas/config.schema.yaml")
EXAMPLES = settings(max_examples=50, deadline=None)


def demo_config() -> dict:
    with open(REPO / "config/config.yaml") as handle:
        return yaml.safe_load(handle)


def walk(node: dict, path: tuple = ()):
    """(path, schema node) of every key the schema defines; a list's items as index 0."""
    for key, sub in node.get("properties", {}).items():
        yield (*path, key), sub
        yield from walk_inside(sub, (*path, key))


def walk_inside(node: dict, path: tuple):
    for branch in [node, *node.get("anyOf", [])]:
        yield from walk(branch, path)
        if isinstance(branch.get("items"), dict):
            yield (*path, 0), branch["items"]
            yield from walk_inside(branch["items"], (*path, 0))


NODES = dict(walk(SCHEMA))
# the smallest valid content of the optional blocks (null by default, with required keys), so a
# key inside them can be set on its own
MINIMAL = {
    ("label_noise",): {"rate": 0.1},
    ("clean",): {"from": "elsewhere", "count": 1},
    ("dataset", "demo"): {"source": "digits"},
    ("study",): {"noise": [{"rate": 0.1}]},
    ("study", "kfold"): {"rate": 0.1, "folds": 2},
}


def types_of(node: dict) -> list[str]:
    kinds = node.get("type") or [branch.get("type") for branch in node.get("anyOf", [])]
    kinds = kinds if isinstance(kinds, list) else [kinds]
    return [t for kind in kinds for t in (kind if isinstance(kind, list) else [kind]) if t]


def dotted(path) -> str:
    return ".".join(str(part) for part in path)


def put(root: dict, path: tuple, value) -> dict:
    """``root`` with ``value`` at ``path``, creating what lies between (an optional block with its
    required keys, a list from its default)."""

    def set_at(node, key, child):
        if isinstance(node, list) and key == len(node):
            node.append(child)  # a list whose default is empty or null
        else:
            node[key] = child

    node = root
    for depth, key in enumerate(path[:-1]):
        prefix = path[: depth + 1]
        present = key < len(node) if isinstance(node, list) else key in node
        child = node[key] if present else None
        if child is None:
            child = copy.deepcopy(MINIMAL.get(prefix, NODES[prefix].get("default", {})))
            if not isinstance(child, (dict, list)):
                # an optional list or block whose default is null, or a key whose default is of
                # another of its forms (influence.layers: "head", or a list of layers)
                child = [] if isinstance(path[depth + 1], int) else {}
            set_at(node, key, child)
        node = child
    set_at(node, path[-1], value)
    return root


def overridable(path: tuple) -> bool:
    """A version may override the key (not the shared ones, which have their own message)."""
    return path[0] not in GLOBAL_ONLY_KEYS and path[:3] not in SHARED_CHECKPOINT_KEYS


TOP_LEVEL_KEYS = sorted(path for path in NODES if path[0] != "versions")
VERSION_KEYS = [path for path in TOP_LEVEL_KEYS if overridable(path)]
VERSION_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,8}", fullmatch=True).filter(
    lambda name: name not in ("data", "datasets", "cross_version")
)


def config_with(path: tuple, value, version: str | None) -> dict:
    """The demo config with ``value`` at ``path``: at the top level, or in a version's override."""
    config = demo_config()
    if version is None:
        return put(config, path, value)
    config["versions"] = {"baseline": {}, version: put({}, path, value)}
    return config


def error_lines(config: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        version_settings(config, SCHEMA)
    message = str(caught.value)
    assert "is not valid under any of the given schemas" not in message, message
    return [line.strip() for line in message.splitlines() if line.strip() != "invalid config:"]


def lines_at(lines: list[str], key: str) -> list[str]:
    """The error lines about exactly ``key`` (not a parent, not a child)."""
    return [line for line in lines if line.startswith(f"{key}: ")]


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=8),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.sampled_from(["a", "b", "rate"]), st.integers(0, 9), max_size=2),
)


def fits(types: list[str], value) -> bool:
    return jsonschema.Draft202012Validator({"type": types}).is_valid(value)


@st.composite
def wrong_types(draw, keys):
    path = draw(st.sampled_from(keys))
    types = types_of(NODES[path])
    value = draw(JSON_VALUES.filter(lambda v: not fits(types, v)))
    return path, types, value


@EXAMPLES
@given(case=wrong_types(TOP_LEVEL_KEYS))
def test_a_value_of_the_wrong_type_names_its_key_and_the_types_accepted(case):
    path, types, value = case
    at_key = lines_at(error_lines(config_with(path, value, None)), dotted(path))
    assert any(all(repr(t) in line for t in types) for line in at_key), (path, value, at_key)
    assert any(f"{value!r} is not of type" in line for line in at_key), at_key


@EXAMPLES
@given(case=wrong_types(VERSION_KEYS), version=VERSION_NAMES)
# once failed by chance in CI: put() descended into the null default of a list
@example(case=(("reports", "explorer", "compare", 0), ["string"], None), version="v")
def test_a_version_overriding_a_key_with_the_wrong_type_names_the_version_and_key(case, version):
    path, types, value = case
    key = f"versions.{version}.{dotted(path)}"
    at_key = lines_at(error_lines(config_with(path, value, version)), key)
    assert any(all(repr(t) in line for t in types) for line in at_key), (key, value, at_key)


CLOSED_BLOCKS = sorted(
    [()] + [path for path, node in NODES.items() if node.get("additionalProperties") is False]
    + [path for path, node in NODES.items()
       for branch in node.get("anyOf", []) if branch.get("additionalProperties") is False]
)  # fmt: skip
UNKNOWN_KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)


def known_keys(block: tuple) -> set[str]:
    node = SCHEMA if block == () else NODES[block]
    return {
        key for branch in [node, *node.get("anyOf", [])] for key in branch.get("properties", {})
    }


@EXAMPLES
@given(block=st.sampled_from(CLOSED_BLOCKS), key=UNKNOWN_KEYS, version=st.none() | VERSION_NAMES)
def test_an_unknown_key_is_named_with_the_keys_allowed_beside_it(block, key, version):
    """Misspelled or unknown keys, at the top level and nested, in the shared settings or in a
    version's override: the unknown key is named itself (its full path) with the known keys."""
    assume(key not in known_keys(block) and (version is None or not block or overridable(block)))
    path = (*block, key)
    name = dotted(path) if version is None else f"versions.{version}.{dotted(path)}"
    at_key = lines_at(error_lines(config_with(path, 1, version)), name)
    assert len(at_key) == 1 and f"unknown key ({key!r} was unexpected)" in at_key[0], at_key
    assert all(known in at_key[0] for known in known_keys(block)), at_key


FRACTIONS = sorted(
    path
    for path, node in NODES.items()
    if "number" in types_of(node) and 1 in (node.get("maximum"), node.get("exclusiveMaximum"))
)


def test_the_fractions_are_found_in_the_schema():
    assert {("split", "train"), ("label_noise", "rate"), ("clean", "fraction")} <= set(FRACTIONS)
    assert ("training", "augment", "crop_scale", 0) in FRACTIONS


def in_scope(path: tuple, version: str | None) -> bool:
    return version is None or overridable(path)


@EXAMPLES
@given(
    path=st.sampled_from(FRACTIONS),
    value=st.floats(-1e6, 0, exclude_max=True, allow_subnormal=False),
    version=st.none() | VERSION_NAMES,
)
def test_a_negative_fraction_names_its_key_and_the_bound(path, value, version):
    assume(in_scope(path, version))
    key = dotted(path) if version is None else f"versions.{version}.{dotted(path)}"
    bound = "or equal to the minimum" if "exclusiveMinimum" in NODES[path] else "the minimum"
    at_key = lines_at(error_lines(config_with(path, value, version)), key)
    assert at_key == [f"{key}: {value!r} is less than {bound} of 0"], at_key


@EXAMPLES
@given(
    path=st.sampled_from(FRACTIONS),
    value=st.floats(1, 1e6, exclude_min=True),
    version=st.none() | VERSION_NAMES,
)
def test_a_fraction_over_1_names_its_key_and_the_bound(path, value, version):
    assume(in_scope(path, version))
    key = dotted(path) if version is None else f"versions.{version}.{dotted(path)}"
    at_key = lines_at(error_lines(config_with(path, value, version)), key)
    assert len(at_key) == 1 and f"{value!r} is greater than" in at_key[0], at_key
    assert at_key[0].endswith("the maximum of 1"), at_key


BOUNDED_INTEGERS = sorted(
    path for path, node in NODES.items() if "integer" in types_of(node) and "minimum" in node
)


@EXAMPLES
@given(path=st.sampled_from(BOUNDED_INTEGERS), below=st.integers(1, 10**6),
       version=st.none() | VERSION_NAMES)  # fmt: skip
def test_an_integer_below_its_minimum_names_its_key_and_the_minimum(path, below, version):
    """influence.top_k = 0 among them: every count with a minimum, in the shared settings or in
    a version."""
    assume(in_scope(path, version))
    minimum = NODES[path]["minimum"]
    key = dotted(path) if version is None else f"versions.{version}.{dotted(path)}"
    at_key = lines_at(error_lines(config_with(path, minimum - below, version)), key)
    assert at_key == [f"{key}: {minimum - below} is less than the minimum of {minimum}"], at_key


@pytest.mark.parametrize("version", [None, "wide"])
def test_top_k_zero_is_refused_naming_influence_top_k(version):
    key = "influence.top_k" if version is None else "versions.wide.influence.top_k"
    lines = error_lines(config_with(("influence", "top_k"), 0, version))
    assert lines == [f"{key}: 0 is less than the minimum of 1"]


@EXAMPLES
@given(
    fractions=st.lists(st.floats(0.01, 1), min_size=3, max_size=3).filter(
        lambda f: abs(sum(f) - 1) > 1e-3
    )
)
def test_split_fractions_that_do_not_sum_to_1_are_refused_naming_all_three(fractions):
    """Each fraction is valid alone, so only the sum is wrong: said when the config is read, not
    when build_manifest splits the images."""
    config = demo_config()
    config["split"] = dict(zip(("train", "val", "test"), fractions, strict=True))
    lines = error_lines(config)
    assert len(lines) == 1, lines
    assert lines[0].startswith("split: split.train + split.val + split.test = ")
    assert f"= {sum(fractions):g}; the three fractions must sum to 1" in lines[0]


def test_split_fractions_over_1_with_defaults_filled_in():
    config = demo_config()
    config["split"] = {"train": 0.9}  # val and test default to 0.15 each
    assert error_lines(config) == [
        "split: split.train + split.val + split.test = 0.9 + 0.15 + 0.15 = 1.2; the three "
        "fractions must sum to 1"
    ]


def test_an_optional_block_of_a_wrong_field_names_the_field_not_the_block():
    """label_noise and clean are anyOf [null, mapping]: jsonschema alone says the whole block "is
    not valid under any of the given schemas"; the error names the key inside and its type."""
    config = config_with(("label_noise",), {"seed": "seven"}, "noisy")
    assert error_lines(config) == [
        "versions.noisy.label_noise: 'rate' is a required property",
        "versions.noisy.label_noise.seed: 'seven' is not of type 'integer'",
    ]
    config = config_with(("clean",), "noisy", "cleaned")
    assert error_lines(config) == [
        "versions.cleaned.clean: 'noisy' is not of type 'null' or 'object'"
    ]
    config = config_with(("influence", "layers"), ["fc.4", "fc.9"], "v")
    assert error_lines(config) == [
        "versions.v.influence.layers.1: 'fc.9' is not one of ['fc.0', 'fc.2', 'fc.4']"
    ]


def test_a_version_that_is_not_a_mapping_and_a_forbidden_value_say_what_is_expected():
    config = demo_config()
    config["versions"]["noisy"] = 3
    assert error_lines(config) == ["versions.noisy: 3 is not of type 'object', 'null'"]
    config = config_with(("rankings", "kfold"), 1, "folds")
    assert error_lines(config) == [
        "versions.folds.rankings.kfold: 1 is not allowed (must not be 1)"
    ]


# ----------------------------------------------------------------------------------------------
# clean.from (and label_noise.reference) naming versions


def linked(versions: dict) -> str:
    config = demo_config()
    config["versions"] = versions
    resolved = version_settings(config, SCHEMA)
    with pytest.raises(ConfigError) as caught:
        check_version_links(resolved)
    return str(caught.value)


def cleaning(source: str) -> dict:
    return {"clean": {"from": source, "count": 1}}


@EXAMPLES
@given(names=st.lists(VERSION_NAMES, min_size=2, max_size=5, unique=True), data=st.data())
def test_clean_from_an_unknown_version_names_the_key_and_the_versions_there_are(names, data):
    missing = data.draw(VERSION_NAMES.filter(lambda name: name not in names))
    user = data.draw(st.sampled_from(names))
    versions = {name: {} for name in names} | {user: cleaning(missing)}
    message = linked(versions)
    assert message.startswith(
        f"versions.{user}.clean.from: refers to version '{missing}', which is not configured"
    ), message
    assert f"(versions: {', '.join(names)})" in message


@EXAMPLES
@given(names=st.lists(VERSION_NAMES, min_size=1, max_size=4, unique=True), data=st.data())
def test_clean_from_itself_names_the_key(names, data):
    user = data.draw(st.sampled_from(names))
    message = linked({name: {} for name in names} | {user: cleaning(user)})
    assert message == f"versions.{user}: refers to itself (versions.{user}.clean.from: '{user}')"


@EXAMPLES
@given(cycle=st.lists(VERSION_NAMES, min_size=2, max_size=5, unique=True),
       others=st.lists(VERSION_NAMES, max_size=2, unique=True))  # fmt: skip
def test_a_cycle_of_cleaned_versions_names_every_link(cycle, others):
    """a cleans b's training set, b cleans c's, ..., the last cleans a's: no order builds them."""
    versions = {name: {} for name in others if name not in cycle}
    versions |= {name: cleaning(cycle[(i + 1) % len(cycle)]) for i, name in enumerate(cycle)}
    message = linked(versions)
    match = re.fullmatch(
        r"versions: (.*): the versions depend on each other in a cycle \((.*)\)", message
    )
    assert match, message
    walked = match.group(1).split(" -> ")
    assert walked[0] == walked[-1] and sorted(walked[:-1]) == sorted(cycle), message
    links = [f"versions.{a}.clean.from: '{b}'" for a, b in itertools.pairwise(walked)]
    assert match.group(2) == ", ".join(links)


def test_a_cycle_through_a_noise_reference_names_that_key():
    message = linked({
        "a": {"clean": {"from": "b", "count": 1, "action": "relabel"}},
        "b": {"label_noise": {"rate": 0.1, "mode": "confusing", "reference": "a"}},
    })  # fmt: skip
    assert "versions.b.label_noise.reference: 'a'" in message and "a -> b -> a" in message


def test_a_noise_reference_to_an_unknown_version_names_that_key():
    message = linked({"a": {"label_noise": {"rate": 0.1, "mode": "confusing", "reference": "zz"}}})
    assert message.startswith("versions.a.label_noise.reference: refers to version 'zz'")


# --- a bad evaluation: block ------------------------------------------------------------------------

BAD_EVALUATIONS = {
    # what is wrong: (the evaluation block, what the dry run says)
    "an unknown method": (
        {"reference": "v1", "methods": ["tracin_final", "gauss_newton"]},
        "evaluation.methods: unknown attribution method 'gauss_newton'",
    ),
    "a method at no checkpoint": (
        {"reference": "v1", "removal": {"methods": ["tracin_final_epoch_007"]}},
        "evaluation.removal.methods: tracin_final_epoch_007 names epoch 7, which is not a checkpoint",
    ),
    "a fraction of 1": (
        {"reference": "v1", "lds": {"fraction": 1.0}},
        "evaluation.lds.fraction: 1.0 is greater than or equal to the maximum of 1",
    ),
    "a fraction of 0": (
        {"reference": "v1", "lds": {"fraction": 0}},
        "evaluation.lds.fraction: 0 is less than or equal to the minimum of 0",
    ),
    "too few subsets for a CI": (
        {"reference": "v1", "lds": {"subsets": 4}},
        "evaluation.lds.subsets: 4 subsets give no confidence interval",
    ),
    "one removal seed": (
        {"reference": "v1", "removal": {"seeds": [0]}},
        "evaluation.removal.seeds: at least 2 seeds",
    ),
    "the reference's seed in its ensemble": (
        {"reference": "v1", "ensemble": {"seeds": [0, 1]}},
        "evaluation.ensemble.seeds: 0 is the reference's own seed",
    ),
    "an ensemble of a relative method": (
        {"reference": "v1", "ensemble": {"seeds": [1], "methods": ["relatif_kfac_head"]}},
        "evaluation.ensemble.methods: relatif_kfac_head is not a sum over checkpoints",
    ),
    "a reference that does not exist": (
        {"reference": "v9"},
        "evaluation.reference: version 'v9' is not configured (versions: v1)",
    ),
}


@pytest.mark.workflow
@pytest.mark.parametrize("case", BAD_EVALUATIONS)
def test_a_bad_evaluation_block_stops_the_dry_run_naming_the_key(tmp_path, case):
    from snakemake_runs import run_snakemake, tiny_config, write_config

    evaluation, said = BAD_EVALUATIONS[case]
    config = {**tiny_config(), "versions": {"v1": {}}, "evaluation": evaluation}
    write_config(tmp_path, config)
    run = run_snakemake(tmp_path, "-n", check=False)
    console = run.stdout + run.stderr
    assert run.returncode != 0 and said in console, console[-2000:]
    assert "Traceback" not in console and not (tmp_path / "results").exists()


def test_a_subset_names_a_removal_set_of_the_evaluation_and_neither_noise_nor_cleaning():
    versions = {"a": {"subset": {"from": "b", "remove": "method_tracin_final_k1"}}, "b": {}}
    settings = version_settings({**demo_config(), "versions": versions}, SCHEMA)
    with pytest.raises(ConfigError, match=r"versions.a.subset.remove: 'method_tracin_final_k1' is "
                                          r"not a removal set of the evaluation"):  # fmt: skip
        check_version_links(settings)
    check_version_links(settings, removal_sets={"method_tracin_final_k1": {}})
    versions["a"]["label_noise"] = {"rate": 0.1}
    settings = version_settings({**demo_config(), "versions": versions}, SCHEMA)
    with pytest.raises(ConfigError, match=r"versions\.a: a subset version trains on its source's"):
        check_version_links(settings, removal_sets={"method_tracin_final_k1": {}})
    versions = {"a": {"subset": {"from": "a"}}}
    settings = version_settings({**demo_config(), "versions": versions}, SCHEMA)
    with pytest.raises(ConfigError, match="refers to itself"):
        check_version_links(settings)
