"""The shape docs/architecture.md describes, checked on the source: the library never spells the
results tree, only the stages and the file formats below them (io/) read and write the workflow's
files, the packages depend on each other in one direction, a stage module imports no other, and
every rule's script calls the stage function of the same name."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "src" / "tracinflow"
# Lower layers never import higher ones. The two at the top import neither each other: the
# workflow's stages and the Python API (tracin) both read and write files through io.
LAYERS = [
    "_util", "config", "data", "train", "influence", "analysis", "plots", "explorer", "io",
    "stages tracin",
]  # fmt: skip
RANK = {layer: rank for rank, names in enumerate(LAYERS) for layer in names.split()}
DOMAIN = ("data", "train", "influence", "analysis", "plots", "explorer")
# Reading and writing files: what only the stages and io do. Methods of these names on any object, and
# these functions of these modules. (Reading the dataset's own images is the data package's job:
# data/listing.py lists the folder and hashes its files, keeping the hashes in its stat cache, which
# the workflow reads while it plans, before any stage runs; data/scan.py decodes the folder,
# data/images.py opens an image file for the cache and the thumbnails and checks its hash.)
FILE_METHODS = {
    "read_parquet", "to_parquet", "read_csv", "to_csv", "read_json", "to_json", "savefig",
    "read_text", "write_text", "read_bytes", "write_bytes", "open_memmap", "mkdir", "unlink",
    "rmtree", "mkdtemp", "mkstemp", "iterdir", "glob", "rglob",
}  # fmt: skip
MODULE_FILE_CALLS = {
    "np": {"load", "save", "savez", "fromfile"},
    "torch": {"load", "save"},
    "pd": {"read_parquet", "read_csv", "read_json"},
    "os": {"replace", "rename", "remove", "unlink", "makedirs", "open"},
    "shutil": {"copy", "copyfile", "copytree", "move", "rmtree"},
    "Image": {"open"},
}
READS_IMAGES = {
    "data/listing.py": {
        "iterdir",
        "rglob",
        "open",
        "read_text",
        "write_text",
        "mkdir",
        "os.replace",
    },
    "data/scan.py": {"read_bytes"},
    "data/images.py": {"open", "Image.open"},
}


def file_call(node: ast.Call) -> str | None:
    """The file operation a call makes, or None."""
    func = node.func
    if isinstance(func, ast.Name):
        return "open" if func.id == "open" else None
    if not isinstance(func, ast.Attribute):
        return None
    owner = func.value.id if isinstance(func.value, ast.Name) else None
    if func.attr in MODULE_FILE_CALLS.get(owner, set()):
        return f"{owner}.{func.attr}"
    return func.attr if func.attr in FILE_METHODS else None


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text())


def layer_of(name: str) -> str:
    """The layer of ``tracinflow.x.y`` (or of the relative file ``x/y.py``)."""
    parts = name.removeprefix("tracinflow.").removesuffix(".py").replace("/", ".").split(".")
    return parts[0]


def docstrings(tree) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_the_library_never_spells_the_results_tree():
    for name, tree in modules():
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
            ):
                assert not re.search(r"(^|[\s/'\"])results(/|$)", node.value), (name, node.value)


@pytest.mark.parametrize("package", DOMAIN)
def test_domain_packages_do_no_file_io(package):
    for name, tree in modules():
        if layer_of(name) != package:
            continue
        allowed = READS_IMAGES.get(name, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                called = file_call(node)
                assert called is None or called in allowed, f"{name}:{node.lineno} calls {called}"
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module != "tracinflow._util.files", f"{name} imports the file writers"


def package_imports(tree) -> list[str]:
    """The ``tracinflow.*`` modules a module imports (``from x import y`` and ``import x``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [module for module in found if module.startswith("tracinflow.")]


def test_dependencies_point_one_way():
    for name, tree in modules():
        own = layer_of(name)
        if own not in RANK:
            continue  # __init__.py of the package itself (test_the_public_names_load_no_stage)
        for module in package_imports(tree):
            target = layer_of(module)
            assert target == own or RANK[target] < RANK[own], f"{name} imports {module}"


def test_stage_modules_share_code_only_through_io():
    """A stage module imports no other: what two stages share lives in io/ (or lower), so a rule's
    module is the rule's alone."""
    for name, tree in modules():
        if layer_of(name) == "stages":
            for module in package_imports(tree):
                assert layer_of(module) != "stages", f"{name} imports {module}"


def in_a_fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter that imports this checkout's package: what a
    module loads is only seen before anything else in the process imported it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_the_public_names_load_no_stage():
    """``tracinflow``'s public names (TracIn and what its users reach for: the loss contract, a
    checkpoint's model, a factor folder) resolve without loading the workflow's stages."""
    public = importlib.import_module("tracinflow").__all__
    assert {"TracIn", "PerSampleLoss", "load_checkpoint", "load_factor_dir"} <= set(public)
    code = (
        "import sys, tracinflow\n"
        "for name in tracinflow.__all__: getattr(tracinflow, name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('tracinflow.stages')))"
    )
    assert in_a_fresh_python(code).strip() == "[]"


def test_no_stage_imports_torchvision_timm_or_scipy_until_it_needs_them():
    """Every Snakemake job starts a Python that imports its stage: torchvision and timm (about 2 s
    on 2 cores, more than torch) are imported by the code that builds a network, and scipy (about
    1 s) by the evaluation's ranks, so the jobs that read factors, rankings or tables never pay for
    them, while building a network still works."""
    stages = sorted(p.stem for p in (PACKAGE / "stages").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for stage in {stages!r}: importlib.import_module('tracinflow.stages.' + stage)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'timm', 'torchvision', 'scipy'}))\n"
        "from tracinflow.train.model import build_model, make_arch\n"
        "build_model(make_arch('efficientnet_lite0', num_classes=3, hidden=[8]))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'timm', 'torchvision', 'scipy'}))"
    )
    loaded = in_a_fresh_python(code).split("\n")
    assert loaded[:2] == ["[]", "['timm', 'torchvision']"]


def rules_in(smk: Path) -> dict[str, str]:
    """``{rule name: script file}`` of the rules a .smk file declares with a script."""
    found = {}
    for match in re.finditer(r"^\s*rule (\w+):(.*?)(?=^\s*rule |\Z)", smk.read_text(), re.M | re.S):
        script = re.search(r'script:\s*"([^"]+)"', match[2])
        if script:
            found[match[1]] = script[1]
    return found


def test_every_rule_calls_the_stage_of_its_name_in_the_module_of_its_rules_file():
    declared = {}
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        for rule, script in rules_in(smk).items():
            declared[rule] = smk.stem
            assert script == f"../scripts/{rule}.py", (smk.name, rule)
            text = (REPO / "workflow/scripts" / f"{rule}.py").read_text()
            assert f"from tracinflow.stages.{smk.stem} import {rule}\n" in text
            assert f"{rule}(snakemake.input, snakemake.output, snakemake.params," in text
            assert len(text.splitlines()) <= 5, f"{rule}.py is more than an entry point"
            module = importlib.import_module(f"tracinflow.stages.{smk.stem}")
            assert callable(getattr(module, rule)), rule
    assert len(declared) == 33  # every rule with a script: all but `all` and version_<name>
    scripts = {path.stem for path in (REPO / "workflow/scripts").glob("*.py")}
    assert scripts == set(declared)


def test_functions_are_short():
    long = []
    for name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{name}:{node.lineno} {node.name} ({length} lines)")
    assert long == []
