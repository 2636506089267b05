"""What the config points at on disk, checked while the workflow is parsed, before any job runs: the
dataset's folder (class folders holding images, the demo's raw files), and the results tree's
stamp (``results/.tracinflow-run.json``), which refuses a config of another dataset whose results
would replace a folder's."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tracinflow.config.schema import ConfigError

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
)


def _resolved(path: Path, given: str, workdir: Path) -> str:
    """Where a configured relative path points, for a message: the absolute path and the working
    directory it is taken from (nothing for an absolute path)."""
    if Path(given).is_absolute():
        return ""
    return (
        f" ({path.resolve()}: a relative path is taken from the working directory, "
        f"{workdir.resolve()})"
    )


def class_folders(root: Path) -> list[str]:
    """The class folder names of an ImageFolder root: its first level's folders, as the scan reads
    them (hidden ones skipped). A listing of one folder, no image is opened."""
    return sorted(
        entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )


def folders_without_images(root: Path, folders, extensions) -> list[str]:
    """The folders of ``folders`` under ``root`` with no file of an image extension at any depth
    (the scan would find no candidate there). Stops at the first such file of each folder, so a
    folder of images costs one directory read, not a walk."""
    allowed = {ext.lower() for ext in extensions}
    empty = []
    for folder in folders:
        found = False
        for _, _, files in os.walk(root / folder):
            if any(Path(name).suffix.lower() in allowed for name in files):
                found = True
                break
        if not found:
            empty.append(folder)
    return empty


def _check_class_folders(dataset: dict, root: Path, workdir: Path) -> None:
    """``exclude_classes`` and ``class_names`` name folders of the root, and every class folder
    that is not excluded holds at least one file with an image extension."""
    where = f"'{dataset['root']}'{_resolved(root, dataset['root'], workdir)}"
    folders = class_folders(root)
    excluded = list(dataset.get("exclude_classes") or [])
    unknown = sorted(set(excluded) - set(folders))
    if unknown:
        raise ConfigError(
            f"dataset.exclude_classes: no class folder named {', '.join(unknown)} in {where}; "
            f"the class folders there are {', '.join(folders) or '(none)'}"
        )
    kept = [folder for folder in folders if folder not in excluded]
    unknown = sorted(set(dataset.get("class_names") or {}) - set(folders))
    if unknown:
        raise ConfigError(
            f"dataset.class_names: no class folder named {', '.join(unknown)} in "
            f"{where}; the class folders there are {', '.join(folders) or '(none)'} (the keys "
            f"are folder names, the values the names the reports show)"
        )
    named_excluded = sorted(set(dataset.get("class_names") or {}) & set(excluded))
    if named_excluded:
        raise ConfigError(
            f"dataset.class_names names {', '.join(named_excluded)}, which "
            f"dataset.exclude_classes leaves out: remove one of the two"
        )
    if len(kept) < 2:
        left = ", ".join(kept) or "none"
        besides = f" besides the excluded {', '.join(excluded)}" if excluded else ""
        raise ConfigError(
            f"dataset.root: {where} has {len(kept)} class folders ({left}){besides}; a classifier "
            f"needs at least 2 (<root>/<class>/<image>)"
        )
    empty = folders_without_images(root, kept, dataset["extensions"])
    if empty:
        raise ConfigError(
            f"dataset.root: the class folder{'s' if len(empty) > 1 else ''} "
            f"{', '.join(repr(name) for name in empty)} in {where} hold no file with an image "
            f"extension ({', '.join(dataset['extensions'])}). Add images, or leave "
            f"{'them' if len(empty) > 1 else 'it'} out with dataset.exclude_classes: "
            f"[{', '.join(json.dumps(name) for name in empty)}]"
        )


def check_dataset_source(dataset: dict, workdir=".") -> None:
    """Fail before any job runs when the images the config points at cannot exist, ``class_names``
    or ``exclude_classes`` names a folder the root does not have, or a class folder holds no file
    with an image extension (one whose files all fail to decode stops build_manifest instead:
    telling would mean decoding every image while the workflow is parsed)."""
    workdir = Path(workdir)
    demo = dataset.get("demo")
    if demo is None:
        root = workdir / dataset["root"]
        if not root.is_dir():
            raise ConfigError(
                f"dataset.root: folder '{dataset['root']}' does not exist"
                f"{_resolved(root, dataset['root'], workdir)}. "
                f"Point dataset.root at an ImageFolder root (<root>/<class>/<image>), e.g. your "
                f"Animals-10 'raw-img' folder."
            )
        _check_class_folders(dataset, root, workdir)
        return
    if demo["source"] == "fashion_mnist":
        raw_dir = workdir / demo["raw_dir"]
        missing = [name for name in FASHION_MNIST_FILES if not (raw_dir / name).is_file()]
        if missing:
            raise ConfigError(
                f"dataset.demo.raw_dir: '{demo['raw_dir']}'"
                f"{_resolved(raw_dir, demo['raw_dir'], workdir)} lacks "
                f"{', '.join(missing)}. These come from Debian's package dataset-fashion-mnist: "
                f"run `make fetch-demo-data` (set-up time, not run time), or copy the files from "
                f"/usr/share/datasets/fashion-mnist/."
            )


def dataset_identity(dataset: dict, workdir=".") -> dict:
    """What a results tree's stamp records of the dataset a folder was made from: ``name``, ``root`` as
    configured and ``resolved_root``, the absolute folder it names from ``workdir``."""
    root = str(dataset["root"])
    return {
        "name": dataset["name"],
        "root": root,
        "resolved_root": str((Path(workdir) / root).resolve()),
    }


def _same_dataset(recorded: dict, identity: dict) -> bool:
    """One dataset: the same name, and the same root as configured or as resolved (a project folder
    that moved keeps its relative root)."""
    return recorded.get("name") == identity["name"] and (
        recorded.get("root") == identity["root"]
        or recorded.get("resolved_root") == identity["resolved_root"]
    )


def _made_elsewhere(tree: Path, data_dir: Path, identity: dict, folders, recorded: dict) -> dict:
    """{folder: what it was made from} for the folders of ``folders`` in ``tree`` made from another
    dataset: as the stamp records, or, for a folder it does not record, when ``data_dir``
    holds no data of this dataset (a tree from before the stamp, or made by targeted builds)."""
    ours_there = (data_dir / identity["name"]).is_dir()
    others = sorted(
        entry.name
        for entry in (data_dir.iterdir() if data_dir.is_dir() else [])
        if entry.is_dir() and entry.name != identity["name"]
    )
    clashes = {}
    for folder in (name for name in folders if (tree / name).is_dir()):
        if folder in recorded:
            if not _same_dataset(recorded[folder], identity):
                made = recorded[folder]
                clashes[folder] = f"dataset '{made['name']}' (root {made['resolved_root']})"
        elif not ours_there:
            clashes[folder] = f"dataset {' or '.join(repr(name) for name in others) or 'unknown'}"
    return clashes


def claim_results(stamp, data_dir, identity: dict, folders, configfiles, workdir=".") -> dict:
    """The results tree's stamp after this run, ``{folder: {name, root}}``: what ``stamp`` (a
    JSON file beside the tree's folders) records, plus this run's ``folders`` (its versions and its
    cross-version or study folder) made from ``identity``. Refuses the run when one of its folders
    was made from another dataset (another name or root), naming both, so that two configs never
    write into one folder unnoticed; editing the settings of the same dataset is a normal rerun,
    and configs whose folders differ (the demo's versions and the noise study's) share a tree."""
    stamp, data_dir = Path(stamp), Path(data_dir)
    recorded = json.loads(stamp.read_text())["folders"] if stamp.is_file() else {}
    clashes = _made_elsewhere(stamp.parent, data_dir, identity, folders, recorded)
    if clashes:
        tree = Path(workdir).resolve() / stamp.parent
        made = "; ".join(f"{tree / folder} from {what}" for folder, what in clashes.items())
        given = ", ".join(str(Path(path).resolve()) for path in configfiles) or "(none given)"
        raise ConfigError(
            f"results folders made from another dataset: {made}"
            + (f" (recorded in {tree / stamp.name})" if recorded else "")
            + f". This run's config ({given}) names dataset '{identity['name']}' (root "
            f"{identity['resolved_root']}), and its results would replace theirs. Run it in a "
            f"project folder of its own (README, 'Your own images': the workflow as a module "
            f"there, or `snakemake -d <folder>`), or move or delete {tree}/ first."
        )
    # name and root as configured: the job adds where the root resolves (a tree that is copied or
    # moved keeps its params, so the stamp is not rebuilt for it)
    claimed = {**recorded, **dict.fromkeys(folders, identity)}
    return {
        folder: {key: made[key] for key in ("name", "root")} for folder, made in claimed.items()
    }
