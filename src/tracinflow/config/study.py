"""The noise study: the versions the compact ``study:`` block generates (per seed a clean baseline,
per noise setting a noisy version and its cleanings), added to the config's own versions while the
workflow is parsed, so ``snakemake -n`` lists every job."""

from __future__ import annotations

import numpy as np

from tracinflow.config.schema import ConfigError, with_defaults

#: a study's cleaned versions take the noisy version's reports.ranking under this name
DEFAULT_RANKING = "default"
NOISE_MODE_LETTERS = {"uniform": "u", "confusing": "c"}


def study_setting_name(rate: float, mode: str, seed: int) -> str:
    """The noisy version of one study setting, e.g. ``u10_s0`` (10% uniform noise, seed 0)."""
    return f"{NOISE_MODE_LETTERS[mode]}{round(rate * 100):02d}_s{seed}"


def _study_kfold(study: dict, rate: float, mode: str) -> dict:
    kfold = study.get("kfold")
    if kfold and kfold["rate"] == rate and kfold["mode"] == mode:
        return {"rankings": {"kfold": kfold["folds"]}}
    return {}


def study_versions(study: dict) -> dict[str, dict]:
    """The versions of a noise study (``study:`` in the config, defaults filled in), in order:
    per seed ``baseline_s<seed>`` (clean labels; also the reference that picks the confusing
    class); per noise setting and seed the noisy version (:func:`study_setting_name`), then one
    cleaned version per ranking in ``drop`` and in ``relabel`` (``<noisy>_drop_<ranking>``), each
    acting on as many images as were flipped (``fraction`` = the noise rate) with the noisy
    version's training seed, so each comparison changes the data alone; then the cleanings of
    ``drop_shares``, which act on other shares (:func:`_other_shares`). ``default`` stands for the
    noisy version's reports.ranking; ``oracle`` drops exactly the planted flips."""
    versions: dict[str, dict] = {}
    for seed in study["seeds"]:
        versions[f"baseline_s{seed}"] = {"seed": seed}
    for noise in study["noise"]:
        rate, mode = noise["rate"], noise["mode"]
        for seed in study["seeds"]:
            noisy = study_setting_name(rate, mode, seed)
            label_noise = {"rate": rate, "seed": seed, "mode": mode}
            if mode == "confusing":
                label_noise["reference"] = f"baseline_s{seed}"
            versions[noisy] = {"seed": seed, "label_noise": label_noise}
            versions[noisy] |= _study_kfold(study, rate, mode)
            for action in ("drop", "relabel"):
                for ranking in study[action]:
                    clean = _cleaning(noisy, rate, action, ranking)
                    versions[f"{noisy}_{action}_{ranking}"] = {"seed": seed, "clean": clean}
            for name, clean in _other_shares(study, noisy, rate).items():
                versions[name] = {"seed": seed, "clean": clean}
    return versions


def _other_shares(study: dict, noisy: str, rate: float) -> dict[str, dict]:
    """The cleanings of ``study.drop_shares`` for one noisy version: per ranking and multiple
    ``m`` of the noise rate, ``<noisy>_drop_<ranking>_x<100 m>`` dropping ``m * rate`` of the
    training set (rounded to 10 places, so 1.5 x 0.3 is 0.45 as a config would write it)."""
    cleanings: dict[str, dict] = {}
    for ranking, multiples in study.get("drop_shares", {}).items():
        for multiple in multiples:
            name = f"{noisy}_drop_{ranking}_x{round(multiple * 100):03d}"
            if np.isclose(multiple, 1.0) and ranking in study["drop"]:
                raise ConfigError(
                    f"study.drop_shares.{ranking}: {multiple:g} is the study's own cleaning "
                    f"({noisy}_drop_{ranking}, from study.drop); leave it out"
                )
            if name in cleanings:
                raise ConfigError(
                    f"study.drop_shares.{ranking}: two multiples name {name}; give multiples "
                    "that differ by at least 0.01"
                )
            cleanings[name] = _cleaning(noisy, round(rate * multiple, 10), "drop", ranking)
    return cleanings


def _cleaning(noisy: str, fraction: float, action: str, ranking: str) -> dict:
    """The clean block of a study's cleaned version (``default``: the noisy version's ranking)."""
    ranking = None if ranking == DEFAULT_RANKING else ranking
    return {"from": noisy, "fraction": fraction, "action": action, "ranking": ranking}


def with_study_versions(config: dict, schema: dict, own_versions: bool) -> dict:
    """``config`` with its study's versions (:func:`study_versions`) added to its own (those it
    names itself: ``own_versions`` says whether it had a ``versions`` key before the schema filled
    in the default). A name in both is an error."""
    study = config.get("study")
    if not study:
        return config
    study = with_defaults(study, schema["properties"]["study"])
    generated = study_versions(study)
    own = dict(config.get("versions") or {}) if own_versions else {}
    clash = sorted(set(own) & set(generated))
    if clash:
        raise ConfigError(f"versions: {', '.join(clash)} are also generated by study:; rename them")
    versions = {**generated, **own}
    _check_cleanings_of_cleanings(versions)
    return {**config, "study": study, "versions": versions}


def _check_cleanings_of_cleanings(versions: dict[str, dict]) -> None:
    """The study's tables place each cleaned version in the noise setting of the version it
    cleans, beside that version's seed; a cleaning of a cleaned version has no such place."""
    for name, settings in versions.items():
        source = (settings or {}).get("clean") and settings["clean"].get("from")
        if source and (versions.get(source) or {}).get("clean"):
            raise ConfigError(
                f"versions.{name}: cleans {source}, itself a cleaned version; a config with "
                f"study: compares cleanings of noisy or clean versions: clean {source}'s source, "
                "or run this version from a config without study:"
            )
