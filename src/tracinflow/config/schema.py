"""The config's schema (workflow/schemas/config.schema.yaml, whose path the caller gives): loading
it, filling its defaults at every level, and checking settings against it with messages that name
the key and what it expects; and :func:`deep_merge`, how a version's overrides lie over the shared
settings."""

from __future__ import annotations

import copy

import jsonschema
import yaml

from tracinflow._util.errors import InputError


class ConfigError(InputError):
    """A config problem, worded for the person who edits config.yaml."""


def deep_merge(base: dict, overrides: dict) -> dict:
    """Return ``base`` with ``overrides`` merged in; nested dicts merge key by key, anything else
    (scalars, lists, None) replaces. Neither argument is modified."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_schema(path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _either(values) -> str:
    return " or ".join(map(repr, values))


def _schema_messages(error: jsonschema.ValidationError) -> list[tuple[list[str], str]]:
    """(key path, message) pairs that say which key is wrong and what it should be.

    jsonschema's own words for an ``anyOf`` ("is not valid under any of the given schemas") name
    neither the key nor the type: descend into the branch whose type fits the value (a mapping
    beside null), naming its deepest keys, or, when no branch's type fits, list the types accepted.
    An unknown key is named itself, with the keys allowed beside it."""
    path = [str(part) for part in error.absolute_path]
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = list(error.schema.get("properties", {}))
        return [
            ([*path, str(key)], f"unknown key ({key!r} was unexpected); known: {', '.join(known)}")
            for key in error.instance
            if key not in known
        ]
    if error.validator == "not" and isinstance(error.validator_value, dict):
        barred = error.validator_value.get("enum") or [error.validator_value.get("const")]
        return [(path, f"{error.instance!r} is not allowed (must not be {_either(barred)})")]
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return [(path, error.message)]
    branches: dict = {}
    for sub in error.context:
        branches.setdefault(sub.schema_path[0], []).append(sub)
    misfit = [
        [s for s in subs if s.validator == "type" and not s.path] for subs in branches.values()
    ]
    fitting = [subs for subs, bad in zip(branches.values(), misfit, strict=True) if not bad]
    if not fitting:
        accepted = [s.validator_value for bad in misfit for s in bad]
        types = [t for value in accepted for t in (value if isinstance(value, list) else [value])]
        return [(path, f"{error.instance!r} is not of type {_either(types)}")]
    deepest = max(fitting, key=lambda subs: max(len(s.absolute_path) for s in subs))
    return [message for sub in deepest for message in _schema_messages(sub)]


def with_defaults(value, node: dict):
    """``value`` with the schema's defaults filled in at every level, including objects that sit in
    an ``anyOf`` beside null (a version's `label_noise: {rate: 0.1}` gets seed and mode), which
    Snakemake's validator leaves alone inside version overrides."""
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [with_defaults(item, node["items"]) for item in value]
    if not isinstance(value, dict):
        return value
    options = [node, *node.get("anyOf", [])]
    properties = next((o["properties"] for o in options if "properties" in o), {})
    out = dict(value)
    for key, sub in properties.items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = with_defaults(out[key], sub)
    return out


def check_against_schema(settings: dict, schema: dict, prefix: str = "") -> None:
    """Raise ConfigError listing every schema violation as ``key.path: what is expected``."""
    validator = jsonschema.Draft202012Validator(schema)
    found = {
        (tuple(([prefix] if prefix else []) + path), message)
        for error in validator.iter_errors(settings)
        for path, message in _schema_messages(error)
    }
    if found:
        lines = "\n  ".join(
            f"{'.'.join(key) or '<top level>'}: {text}" for key, text in sorted(found)
        )
        raise ConfigError(f"invalid config:\n  {lines}")
