"""What versions say about each other, checked once every version's settings are resolved: the
versions a training set is built from (noise reference, cleaning, subset) exist and form no cycle,
a cleaning names its images in one way, a ranking is one its source can compute, an ensemble's
members share the recipe, and the explorer compares configured versions."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

from tracinflow.config.schema import ConfigError

#: what a ranking that not every version computes needs (the others need nothing more)
RANKING_NEEDS = {
    "cleanlab": "model.pretrained (the frozen pretrained backbone's features)",
    "cleanlab_kfold": "rankings.kfold >= 2 (k-fold training of the version's model)",
    "gn_self_influence": "influence.layers tracing the final layer fc.4",
}


def plants_noise(versions: dict, name: str) -> bool:
    """Whether version ``name``'s training set carries planted label flips: its own, or, when it
    cleans another version's training set, that version's (the chain is followed at most as many
    steps as there are versions, so a cycle, which check_version_links reports, ends)."""
    for _ in range(len(versions)):
        settings = versions[name]
        noise = settings.get("label_noise")
        source = settings.get("clean") or settings.get("subset")
        if noise and noise.get("rate", 0) > 0:
            return True
        if not source or source.get("from") not in versions:
            return False
        name = source["from"]
    return False


def _check_rankings(name: str, settings: dict, versions: dict) -> None:
    """The ranking a version reports or cleans by must be one its source can compute."""

    def available(version_settings: dict, ranking: str) -> bool:
        if ranking == "cleanlab":
            return bool(version_settings["model"]["pretrained"])
        if ranking == "cleanlab_kfold":
            return version_settings["rankings"]["kfold"] >= 2
        return True

    checks = [("reports.ranking", settings["reports"]["ranking"], settings)]
    clean = settings.get("clean")
    if clean and clean.get("ranking") and clean["from"] in versions:
        checks.append(("clean.ranking", clean["ranking"], versions[clean["from"]]))
    for key, ranking, source in checks:
        if not available(source, ranking):
            raise ConfigError(
                f"versions.{name}.{key}: {ranking} needs {RANKING_NEEDS[ranking]}"
                + (f" in version {clean['from']}" if key == "clean.ranking" else "")
            )
    if clean and clean.get("ranking") == "oracle" and clean["from"] in versions:
        if not plants_noise(versions, clean["from"]):
            raise ConfigError(
                f"versions.{name}.clean.ranking: oracle drops the planted flips, and version "
                f"{clean['from']} plants none"
            )


def _check_ensemble(name: str, settings: dict, versions: dict) -> None:
    """influence.ensemble names other configured versions whose settings are this version's but
    for their seed (and their own ensemble): models of one training set, one recipe."""
    where = f"versions.{name}.influence.ensemble"

    def recipe(settings):
        out = copy.deepcopy(settings)
        out.pop("seed", None)
        out["influence"].pop("ensemble", None)
        return out

    for member in settings["influence"].get("ensemble") or []:
        if member == name:
            raise ConfigError(f"{where}: names the version itself (it is always a member)")
        if member not in versions:
            raise ConfigError(
                f"{where}: refers to version '{member}', which is not configured (versions: "
                f"{', '.join(versions)})"
            )
        if versions[member]["seed"] == settings["seed"]:
            raise ConfigError(
                f"{where}: '{member}' has the same seed ({settings['seed']}), so the same model; "
                f"give it another `seed:`"
            )
        if recipe(versions[member]) != recipe(settings):
            differ = sorted(k for k in {*settings, *versions[member]}
                            if recipe(settings).get(k) != recipe(versions[member]).get(k))  # fmt: skip
            raise ConfigError(
                f"{where}: '{member}' differs from '{name}' in more than its seed ({', '.join(differ)}); "
                f"an ensemble's members are the same training set and recipe with other seeds"
            )


def _source_keys(settings: dict) -> list[tuple[str, str]]:
    """(key, version) of each version this one's training set is built from."""
    sources = []
    noise = settings.get("label_noise")
    if noise and noise.get("mode") == "confusing" and noise.get("reference"):
        sources.append(("label_noise.reference", noise["reference"]))
    if settings.get("clean"):
        sources.append(("clean.from", settings["clean"]["from"]))
    if settings.get("subset"):
        sources.append(("subset.from", settings["subset"]["from"]))
    return sources


def version_sources(settings: dict) -> list[str]:
    """The versions whose outputs this version's training set is built from (noise reference, the
    cleaning source)."""
    return [source for _, source in _source_keys(settings)]


def _check_clean(where: str, clean: dict, workdir) -> None:
    """A clean block says which images in exactly one way (``fraction`` or ``count`` of a ranking's
    top suspects, or a marks file, ``list``), and a marks file exists."""
    given = [key for key in ("fraction", "count", "list") if clean.get(key) is not None]
    if len(given) != 1:
        raise ConfigError(
            f"{where}.clean: give exactly one of `fraction`, `count` or `list` (got "
            f"{', '.join(given) or 'none'})"
        )
    if given != ["list"]:
        return
    if clean.get("ranking") is not None:
        raise ConfigError(
            f"{where}.clean.ranking: a `list` names the images itself; remove `ranking` (it picks "
            "the top suspects for `fraction` or `count`)"
        )
    path = Path(workdir) / clean["list"]
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(
            f"{where}.clean.list: {clean['list']} {state}; put the marks CSV there (the explorer "
            "page's download, header idx,path,label,mark) or point `list` at it (a relative "
            f"path is taken from the directory snakemake runs in, {Path(workdir).resolve()})"
        )


def _check_compared(name: str, settings: dict, versions: dict) -> None:
    """The versions an explorer page compares must be configured."""
    compare = ((settings.get("reports") or {}).get("explorer") or {}).get("compare") or []
    unknown = [other for other in compare if other not in versions]
    if unknown:
        raise ConfigError(
            f"versions.{name}.reports.explorer.compare: {', '.join(unknown)} not configured "
            f"(versions: {', '.join(versions)})"
        )


def _check_subset(where: str, settings: dict, removal_sets) -> None:
    """A subset version takes its labels from its source: it plants no noise and cleans nothing,
    and it keeps a fraction or drops a removal set the evaluation makes, not both."""
    subset = settings["subset"]
    noise = settings.get("label_noise")
    if (noise and noise.get("rate", 0) > 0) or settings.get("clean"):
        raise ConfigError(
            f"{where}: a subset version trains on its source's training set as it is (its noise and "
            "cleaning included); remove label_noise and clean"
        )
    if subset.get("fraction") is not None and subset.get("remove") is not None:
        raise ConfigError(f"{where}.subset: give `fraction` or `remove`, not both")
    remove = subset.get("remove")
    if remove is not None and remove not in removal_sets:
        known = ", ".join(sorted(removal_sets)[:6]) or "none: the config has no evaluation block"
        raise ConfigError(
            f"{where}.subset.remove: {remove!r} is not a removal set of the evaluation (they are "
            f"{known}{', ...' if len(removal_sets) > 6 else ''})"
        )


def check_version_links(versions: dict[str, dict], workdir=".", removal_sets=()) -> None:
    """Label noise, cleaning and subsets name other versions: check the names, the choices that must
    come in pairs, that a marks file to clean by exists (relative to ``workdir``), that a subset's
    removal set is one of ``removal_sets`` (the evaluation's), and that no version depends on
    itself through a chain."""
    for name, settings in versions.items():
        _check_rankings(name, settings, versions)
        _check_ensemble(name, settings, versions)
        _check_compared(name, settings, versions)
        noise, clean = settings.get("label_noise"), settings.get("clean")
        where = f"versions.{name}"
        if noise:
            reference = noise.get("reference")
            if noise.get("mode") == "confusing" and not reference:
                raise ConfigError(
                    f"{where}.label_noise: mode 'confusing' needs `reference: <version>`, the "
                    "version whose model picks the most confusing class"
                )
            if noise.get("mode") != "confusing" and reference:
                raise ConfigError(
                    f"{where}.label_noise.reference: only used with mode 'confusing'; remove it"
                )
        if noise and noise.get("rate", 0) > 0 and clean:
            raise ConfigError(
                f"{where}: a version either plants label noise or cleans another version's "
                "training set (which carries that version's noise), not both"
            )
        if clean:
            _check_clean(where, clean, workdir)
        if settings.get("subset"):
            _check_subset(where, settings, removal_sets)
        for key, source in _source_keys(settings):
            if source not in versions:
                raise ConfigError(
                    f"{where}.{key}: refers to version '{source}', which is not configured "
                    f"(versions: {', '.join(versions)})"
                )
            if source == name:
                raise ConfigError(f"{where}: refers to itself ({where}.{key}: {source!r})")
        if noise and noise.get("mode") == "confusing":
            source_clean = versions[noise["reference"]].get("clean")
            if source_clean and source_clean.get("action") == "drop":
                raise ConfigError(
                    f"{where}.label_noise.reference: '{noise['reference']}' drops training images, "
                    "so its model has no prediction for them; use a version that trains on all"
                )
    _check_no_cycles(versions)


def _check_no_cycles(versions: dict[str, dict]) -> None:
    """No version is built, through a chain of sources, from itself; the error names each link."""
    for name in versions:
        # Depth-first walk of everything this version is built from; reaching it again is a cycle.
        stack = [[name, source] for source in version_sources(versions[name])]
        seen = set()
        while stack:
            path = stack.pop()
            if path[-1] == name:
                links = ", ".join(
                    f"versions.{user}.{key}: {source!r}"
                    for user, target in itertools.pairwise(path)
                    for key, source in _source_keys(versions[user])
                    if source == target
                )
                raise ConfigError(
                    f"versions: {' -> '.join(path)}: the versions depend on each other in a cycle "
                    f"({links})"
                )
            if path[-1] in seen:
                continue
            seen.add(path[-1])
            stack.extend([*path, source] for source in version_sources(versions[path[-1]]))
