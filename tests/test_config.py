import copy
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from tracinflow.config import (
    ConfigError,
    check_dataset_source,
    check_version_links,
    claim_results,
    dataset_identity,
    deep_merge,
    load_schema,
    version_method,
    version_settings,
    with_defaults,
    with_reference,
)

SCHEMA = load_schema(REPO / "workflow/schemas/config.schema.yaml")


def demo_config():
    with open(REPO / "config/config.yaml") as handle:
        return yaml.safe_load(handle)


def test_deep_merge_merges_nested_dicts_and_replaces_everything_else():
    base = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "list": [1, 2], "x": 1}
    overrides = {"a": {"c": {"e": 30}, "new": 4}, "list": [9], "x": None}
    before = copy.deepcopy(base)
    merged = deep_merge(base, overrides)
    assert merged == {"a": {"b": 1, "c": {"d": 2, "e": 30}, "new": 4}, "list": [9], "x": None}
    assert base == before  # inputs untouched
    merged["a"]["c"]["d"] = 99
    assert base["a"]["c"]["d"] == 2  # no shared nested objects


def test_versions_get_the_global_settings_with_their_overrides():
    config = demo_config()
    config["versions"] = {"v1": {}, "v2": {"seed": 7}, "v3": None}
    resolved = version_settings(config, SCHEMA)
    assert list(resolved) == ["v1", "v2", "v3"]
    assert resolved["v1"]["seed"] == config["seed"]
    assert resolved["v2"]["seed"] == 7
    assert resolved["v2"]["dataset"] == resolved["v1"]["dataset"]
    assert resolved["v2"]["dataset"]["name"] == config["dataset"]["name"]
    assert "versions" not in resolved["v1"]


def test_the_default_method_is_k_fac_on_the_head_and_tracin_stays_one_key_away():
    # the evaluation's choice (docs/evaluation.md): what a version without an influence block uses
    config = demo_config()
    config["versions"] = {
        "default": {},
        "tracin": {"influence": {"method": "tracin"}},
        "final": {"influence": {"method": "tracin", "layers": ["fc.4"]}},
    }
    resolved = version_settings(config, SCHEMA)
    assert {name: version_method(s) for name, s in resolved.items()} == {
        "default": "kfac_head",
        "tracin": "tracin_head",
        "final": "tracin_final",
    }


def test_a_bad_override_names_the_version_and_key():
    config = demo_config()
    config["versions"] = {"noisy": {"seed": "seven"}}
    with pytest.raises(
        ConfigError, match=r"versions\.noisy\.seed: 'seven' is not of type 'integer'"
    ):
        version_settings(config, SCHEMA)
    config["versions"] = {"noisy": {"sede": 1}}
    with pytest.raises(ConfigError, match=r"versions\.noisy.*'sede' was unexpected"):
        version_settings(config, SCHEMA)


def test_dataset_and_split_cannot_be_overridden_per_version():
    config = demo_config()
    config["versions"] = {"v1": {"split": {"seed": 1}}}
    with pytest.raises(
        ConfigError, match=r"versions\.v1\.split: 'split' is shared by all versions"
    ):
        version_settings(config, SCHEMA)


def test_missing_dataset_folder_names_the_path(tmp_path):
    dataset = {"root": "no/such/folder", "demo": None}
    with pytest.raises(
        ConfigError, match=r"dataset.root: folder 'no/such/folder' does not exist"
    ) as err:
        check_dataset_source(dataset, workdir=tmp_path)
    # where a relative root was looked for, and from which working directory
    assert f"{tmp_path.resolve()}/no/such/folder" in str(err.value)
    assert f"working directory, {tmp_path.resolve()})" in str(err.value)
    for name in ("cat/a.png", "dog/b.png"):  # the parse opens no image: a name is enough
        (tmp_path / "no/such/folder" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "no/such/folder" / name).write_bytes(b"")
    check_dataset_source({**dataset, "extensions": [".png"]}, workdir=tmp_path)


def test_class_names_that_name_no_class_folder_are_named_with_the_folders_found(tmp_path):
    for folder in ("cane", "gatto", ".hidden"):
        (tmp_path / "imgs" / folder).mkdir(parents=True)
        (tmp_path / "imgs" / folder / "1.jpeg").write_bytes(b"")
    (tmp_path / "imgs/readme.txt").write_text("not a class\n")
    dataset = {"root": "imgs", "demo": None, "extensions": [".jpeg"],
               "class_names": {"cane": "dog", "pecora": "sheep", "ragno": "spider"}}  # fmt: skip
    with pytest.raises(ConfigError) as err:
        check_dataset_source(dataset, workdir=tmp_path)
    message = str(err.value)
    assert message.startswith("dataset.class_names: no class folder named pecora, ragno in 'imgs'")
    assert "the class folders there are cane, gatto (" in message
    dataset["class_names"] = {"cane": "dog", "gatto": "cat"}
    check_dataset_source(dataset, workdir=tmp_path)
    # a demo's folder is written by the workflow: nothing to list at parse time
    check_dataset_source({"root": "x", "demo": {"source": "digits"}, "class_names": {"a": "b"}})


DEMO = {"name": "fashion_mnist_demo", "root": "results/datasets/fashion_mnist_demo"}
DEMO_FOLDERS = ["baseline", "noisy", "cleaned", "cross_version"]


def demo_tree(tmp_path) -> tuple:
    """A results tree the demo made in ``tmp_path``, stamped: (stamp path, data folder)."""
    tree = tmp_path / "results"
    for folder in [*DEMO_FOLDERS, "data/fashion_mnist_demo"]:
        (tree / folder).mkdir(parents=True)
    stamp = tree / ".tracinflow-run.json"
    identity = dataset_identity(DEMO, tmp_path)
    stamp.write_text(json.dumps({"folders": dict.fromkeys(DEMO_FOLDERS, identity)}))
    return stamp, tree / "data"


def test_a_results_folder_refuses_another_dataset_naming_both(tmp_path):
    stamp, data_dir = demo_tree(tmp_path)
    # the same dataset, its settings edited: a normal rerun, the stamp's params unchanged
    same = dataset_identity(DEMO, tmp_path)
    assert claim_results(stamp, data_dir, same, DEMO_FOLDERS, []) == dict.fromkeys(
        DEMO_FOLDERS, DEMO
    )
    for other in ({"name": "animals10", "root": "/data/raw-img"},
                  {"name": "fashion_mnist_demo", "root": "elsewhere"}):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            claim_results(
                stamp, data_dir, dataset_identity(other, tmp_path), ["baseline", "cross_version"],
                [tmp_path / "mine.yaml"], workdir=tmp_path,
            )  # fmt: skip
        message = str(err.value)
        tree = tmp_path.resolve() / "results"
        demo_root = tmp_path.resolve() / "results/datasets/fashion_mnist_demo"
        assert message.startswith(
            f"results folders made from another dataset: {tree}/baseline from dataset "
            f"'fashion_mnist_demo' (root {demo_root}); {tree}/cross_version from dataset"
        )
        assert f"(recorded in {tree}/.tracinflow-run.json)" in message
        assert f"config ({tmp_path.resolve()}/mine.yaml) names dataset '{other['name']}'" in message
        assert "project folder of its own" in message and "snakemake -d <folder>" in message
        assert f"move or delete {tree}/ first" in message


def test_configs_of_other_datasets_in_other_folders_share_a_tree(tmp_path):
    """The demo and the noise study: other versions, another dataset, one results tree."""
    stamp, data_dir = demo_tree(tmp_path)
    study = dataset_identity({"name": "fashion_mnist_study", "root": "x"}, tmp_path)
    claimed = claim_results(stamp, data_dir, study, ["baseline_s0", "study"], [])
    assert (
        claimed["baseline_s0"] == claimed["study"] == {"name": "fashion_mnist_study", "root": "x"}
    )
    assert claimed["baseline"] == claimed["cross_version"] == DEMO


def test_a_moved_project_folder_keeps_its_relative_root(tmp_path):
    stamp, data_dir = demo_tree(tmp_path / "before")
    claim_results(stamp, data_dir, dataset_identity(DEMO, tmp_path / "after"), DEMO_FOLDERS, [])


def test_a_tree_without_a_stamp_refuses_folders_of_another_datasets_data(tmp_path):
    """A tree from before the stamp (or made by targeted builds alone): a folder the run would
    write is another dataset's when the tree holds no data of the run's dataset."""
    stamp, data_dir = demo_tree(tmp_path)
    stamp.unlink()
    mine = dataset_identity({"name": "mine", "root": "images"}, tmp_path)
    claim_results(stamp, data_dir, mine, ["v1", "v2"], [])  # no such folder yet
    with pytest.raises(ConfigError, match="baseline from dataset 'fashion_mnist_demo'"):
        claim_results(stamp, data_dir, mine, ["baseline"], [])
    (data_dir / "mine").mkdir()  # its own data is there: the folders are taken as its own
    claim_results(stamp, data_dir, mine, ["baseline"], [])


def test_missing_fashion_mnist_files_say_how_to_get_them(tmp_path):
    dataset = {"root": "x", "demo": {"source": "fashion_mnist", "raw_dir": "raw"}}
    with pytest.raises(ConfigError, match="make fetch-demo-data"):
        check_dataset_source(dataset, workdir=tmp_path)
    check_dataset_source({"root": "x", "demo": {"source": "digits"}}, workdir=tmp_path)


def test_every_schema_key_has_a_description_and_a_default():
    seen = []

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            seen.append(f"{path}{key}")
            assert "description" in sub, f"{path}{key} has no description"
            if key in node.get("required", []):
                continue  # the required keys of optional blocks (demo.source, clean.from, ...)
            assert "default" in sub, f"{path}{key} has no default"
            walk(sub, f"{path}{key}.")
            for branch in sub.get("anyOf", []):
                walk(branch, f"{path}{key}.")

    walk(SCHEMA, "")
    assert "dataset.demo.images_per_class" in seen  # the walk reaches optional blocks


def test_config_readme_documents_every_key():
    readme = (REPO / "config/README.md").read_text()
    assert readme == with_reference(readme, SCHEMA), "run `make config-docs`"
    assert "`dataset.demo.images_per_class`" in readme


def test_the_config_package_imports_no_torch():
    # workflow/rules/common.smk imports it while planning and in every job: torch would cost seconds
    code = "import sys, tracinflow.config; sys.exit('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def default_differences(given: dict, schema_defaults: dict, path: str = "") -> list[str]:
    """Where ``given`` (a tree of defaults) and the schema's defaults part: a key one has and the
    other lacks (``given`` may leave whole sections of the schema out) or a different value."""
    found = []
    for key in sorted({*given, *schema_defaults}):
        where = f"{path}{key}"
        if key not in schema_defaults:
            found.append(f"{where}: not a schema key")
        elif key not in given:
            found.append(f"{where}: the schema's default {schema_defaults[key]!r} is missing")
        elif isinstance(given[key], dict) and isinstance(schema_defaults[key], dict):
            found += default_differences(given[key], schema_defaults[key], f"{where}.")
        elif given[key] != schema_defaults[key]:
            found.append(f"{where}: {given[key]!r}, the schema says {schema_defaults[key]!r}")
    return found


def test_the_trainers_defaults_are_the_schemas():
    # The Python API trains with train.trainer.DEFAULT_SETTINGS where a setting is not given, the
    # workflow with the schema's defaults: one recipe only if they are the same values.
    from tracinflow.train.trainer import DEFAULT_SETTINGS

    schema_defaults = with_defaults({}, SCHEMA)
    sections = {key: schema_defaults[key] for key in DEFAULT_SETTINGS}
    assert set(DEFAULT_SETTINGS) == {"seed", "model", "training"}
    assert default_differences(DEFAULT_SETTINGS, sections) == []


def resolved_versions(versions: dict) -> dict:
    config = demo_config()
    config["versions"] = versions
    return version_settings(config, SCHEMA)


def test_noise_and_cleaning_settings_get_their_defaults():
    resolved = resolved_versions(
        {
            "base": {},
            "noisy": {"label_noise": {"rate": 0.1}},
            "clean": {"clean": {"from": "noisy", "count": 5}},
        }
    )
    assert resolved["base"]["label_noise"] is None and resolved["base"]["clean"] is None
    assert resolved["noisy"]["label_noise"] == {
        "rate": 0.1, "seed": 0, "mode": "uniform", "reference": None,
    }  # fmt: skip
    assert resolved["clean"]["clean"] == {
        "from": "noisy", "count": 5, "fraction": None, "ranking": None, "list": None,
        "action": "drop",
    }  # fmt: skip
    check_version_links(resolved)


def test_an_ensembles_members_differ_in_their_seed_alone():
    resolved = resolved_versions({
        "a": {"influence": {"method": "kfac", "layers": "head", "ensemble": ["b", "c"]}},
        "b": {"seed": 1, "influence": {"method": "kfac", "layers": "head"}},
        "c": {"seed": 2, "influence": {"method": "kfac", "layers": "head", "ensemble": ["a"]}},
    })  # fmt: skip
    assert resolved["a"]["influence"]["ensemble"] == ["b", "c"]
    assert resolved["b"]["influence"]["ensemble"] == []
    check_version_links(resolved)


@pytest.mark.parametrize(
    ("versions", "message"),
    [
        ({"a": {"clean": {"from": "nope", "count": 1}}}, "refers to version 'nope', which is not"),
        ({"a": {"clean": {"from": "a", "count": 1}}}, "versions.a: refers to itself"),
        (
            {"a": {"clean": {"from": "b", "count": 1}}, "b": {"clean": {"from": "a", "count": 1}}},
            "a -> b -> a: the versions depend on each other in a cycle",
        ),
        (
            {"a": {}, "b": {"clean": {"from": "a"}}},
            "versions.b.clean: give exactly one of `fraction`, `count` or `list` (got none)",
        ),
        (
            {"a": {}, "b": {"clean": {"from": "a", "count": 2, "fraction": 0.1}}},
            "got fraction, count",
        ),
        (
            {"a": {"label_noise": {"rate": 0.1, "mode": "confusing"}}},
            "needs `reference: <version>`",
        ),
        (
            {"a": {}, "b": {"label_noise": {"rate": 0.1, "reference": "a"}}},
            "only used with mode 'confusing'",
        ),
        (
            {"a": {}, "b": {"label_noise": {"rate": 0.1}, "clean": {"from": "a", "count": 1}}},
            "either plants label noise or cleans",
        ),
        (
            {
                "a": {},
                "b": {"clean": {"from": "a", "count": 1}},
                "c": {"label_noise": {"rate": 0.1, "mode": "confusing", "reference": "b"}},
            },
            "'b' drops training images",
        ),
        (
            {"a": {"influence": {"ensemble": ["a"]}}},
            "versions.a.influence.ensemble: names the version itself",
        ),
        (
            {"a": {"influence": {"ensemble": ["b"]}}},
            "versions.a.influence.ensemble: refers to version 'b', which is not configured",
        ),
        (
            {"a": {"influence": {"ensemble": ["b"]}}, "b": {}},
            "'b' has the same seed (0), so the same model",
        ),
        (
            {
                "a": {"influence": {"ensemble": ["b"]}},
                "b": {"seed": 1, "label_noise": {"rate": 0.1}},
            },
            "'b' differs from 'a' in more than its seed (label_noise)",
        ),
    ],
)
def test_bad_links_between_versions_are_refused_naming_them(versions, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_version_links(resolved_versions(versions))


@pytest.mark.parametrize(
    ("clean", "message"),
    [
        (
            {"fraction": 0.1},
            "give exactly one of `fraction`, `count` or `list` (got fraction, list)",
        ),
        ({"count": 3}, "(got count, list)"),
        (
            {"ranking": "loss"},
            "versions.b.clean.ranking: a `list` names the images itself; remove `ranking`",
        ),
    ],
)
def test_a_marks_list_goes_without_fraction_count_and_ranking(tmp_path, clean, message):
    marks = tmp_path / "marks.csv"
    marks.write_text("idx,path,label,mark\n1,a.png,a,mislabeled\n")
    versions = {"a": {}, "b": {"clean": {"from": "a", "list": str(marks), **clean}}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_version_links(resolved_versions(versions))


def test_a_marks_list_must_exist_relative_to_the_working_directory(tmp_path):
    versions = resolved_versions({"a": {}, "b": {"clean": {"from": "a", "list": "lists/m.csv"}}})
    with pytest.raises(ConfigError) as caught:
        check_version_links(versions, workdir=tmp_path)
    message = str(caught.value)
    assert message.startswith("versions.b.clean.list: lists/m.csv does not exist; put the marks")
    assert str(tmp_path.resolve()) in message  # where a relative path is taken from
    (tmp_path / "lists").mkdir()
    with pytest.raises(ConfigError, match=r"versions\.b\.clean\.list: lists is not a file"):
        check_version_links(
            resolved_versions({"a": {}, "b": {"clean": {"from": "a", "list": "lists"}}}),
            workdir=tmp_path,
        )
    (tmp_path / "lists/m.csv").write_text("idx,mark\n1,mislabeled\n")
    check_version_links(versions, workdir=tmp_path)
    assert versions["b"]["clean"] == {
        "from": "a", "list": "lists/m.csv", "ranking": None, "fraction": None, "count": None,
        "action": "drop",
    }  # fmt: skip


def test_cross_version_settings_cannot_be_overridden_per_version():
    with pytest.raises(ConfigError, match=r"versions\.a\.cross_version"):
        resolved_versions({"a": {"cross_version": {"top": 5}}})


def test_checkpoint_epochs_are_one_list_for_all_versions():
    from tracinflow.config import shared_checkpoint_epochs

    config = demo_config()
    config["versions"] = {"a": {}, "b": {"seed": 2, "training": {"stage2": {"max_epochs": 20}}}}
    assert shared_checkpoint_epochs(version_settings(config, SCHEMA)) == [1, 2, 3]
    config["versions"]["b"] = {"training": {"stage2": {"checkpoint_epochs": [5, 10]}}}
    with pytest.raises(
        ConfigError, match=r"versions\.b\.training\.stage2\.checkpoint_epochs: .*shared by all"
    ):
        version_settings(config, SCHEMA)
    # training must reach the last checkpoint: said when the workflow is parsed, not mid-run
    config["versions"]["b"] = {"training": {"stage2": {"max_epochs": 2}}}
    with pytest.raises(
        ConfigError, match=r"versions\.b\.training\.stage2\.max_epochs: 2 is before .* \(3\)"
    ):
        version_settings(config, SCHEMA)


def test_the_stamp_results_stamp_writes_is_what_the_next_parse_reads(tmp_path, monkeypatch):
    from tracinflow.stages.data import results_stamp

    monkeypatch.chdir(tmp_path)  # a job runs in the working directory
    (tmp_path / "results/data/mine").mkdir(parents=True)
    (tmp_path / "results/v1").mkdir()
    stamp, data_dir = "results/.tracinflow-run.json", "results/data"
    mine = dataset_identity({"name": "mine", "root": "images"}, tmp_path)
    folders = claim_results(stamp, data_dir, mine, ["v1", "cross_version"], [])
    results_stamp({}, {"stamp": stamp}, {"folders": folders}, 1, lambda line: None)
    written = json.loads((tmp_path / stamp).read_text())["folders"]
    assert written["v1"] == {"name": "mine", "root": "images",
                             "resolved_root": str(tmp_path.resolve() / "images")}  # fmt: skip
    assert claim_results(stamp, data_dir, mine, ["v1"], []) == folders
    other = dataset_identity({"name": "other", "root": "images"}, tmp_path)
    with pytest.raises(ConfigError, match="v1 from dataset 'mine'"):
        claim_results(stamp, data_dir, other, ["v1"], [])
