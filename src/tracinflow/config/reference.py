"""config/README.md's key reference, generated from the schema (``python -m tracinflow.config
SCHEMA README``, run by ``make config-docs``), so the page cannot drift from what the workflow
accepts."""

from __future__ import annotations

import json


def schema_reference(schema: dict) -> str:
    """A markdown table of every config key (type, default, description), generated from the schema
    so config/README.md cannot drift from what the workflow accepts."""

    def kind(node) -> str:
        types = node.get("type") or [branch.get("type") for branch in node.get("anyOf", [])]
        text = " or ".join(types) if isinstance(types, list) else types
        if "enum" in node:
            text += " (" + " \\| ".join(str(v) for v in node["enum"]) + ")"
        return text

    def default(node) -> str:
        if "default" not in node:
            return "required"
        # an object whose keys are listed below it takes their defaults; a free mapping is empty
        if node["default"] == {} and "properties" in node:
            return "see below"
        return f"`{json.dumps(node['default'])}`"

    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]

    def walk(node, prefix):
        for key, sub in node.get("properties", {}).items():
            description = " ".join(sub.get("description", "").split())
            lines.append(f"| `{prefix}{key}` | {kind(sub)} | {default(sub)} | {description} |")
            walk(sub, f"{prefix}{key}.")
            for branch in sub.get("anyOf", []):
                walk(branch, f"{prefix}{key}.")

    walk(schema, "")
    return "\n".join(lines) + "\n"


REFERENCE_MARKERS = ("<!-- reference:start -->\n", "<!-- reference:end -->")


def with_reference(readme: str, schema: dict) -> str:
    """``readme`` with the generated key reference between its two marker lines."""
    start, end = REFERENCE_MARKERS
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + schema_reference(schema) + end + tail
