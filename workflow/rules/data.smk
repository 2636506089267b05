if DEMO:

    rule make_demo_dataset:
        input:
            unpack(get_demo_inputs),
        output:
            root=directory(DATASET_ROOT),
        log:
            "logs/make_demo_dataset.log",
        benchmark:
            "results/benchmarks/make_demo_dataset.tsv"
        conda:
            "../envs/tracinflow.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            demo=DEMO,
        script:
            "../scripts/make_demo_dataset.py"


# What reruns the manifest is the `source` param, the fingerprint of every file under the root
# (get_dataset_source); the root is an input by its time only where make_demo_dataset writes it.
rule build_manifest:
    input:
        root=DATASET_ROOT_INPUT,
    output:
        images=f"results/data/{DATASET}/images.parquet",
        rejected=f"results/data/{DATASET}/rejected.csv",
        duplicates=f"results/data/{DATASET}/duplicates.csv",
        source=f"results/data/{DATASET}/source.json",
    log:
        f"logs/build_manifest/{DATASET}.log",
    benchmark:
        f"results/benchmarks/build_manifest/{DATASET}.tsv"
    conda:
        "../envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        source=get_dataset_source,
        extensions=config["dataset"]["extensions"],
        exclude_classes=config["dataset"]["exclude_classes"],
        class_names=config["dataset"]["class_names"],
        max_pixels=config["dataset"]["max_pixels"],
        conflicting_duplicates=config["dataset"]["conflicting_duplicates"],
    script:
        "../scripts/build_manifest.py"


rule split_dataset:
    input:
        images=rules.build_manifest.output.images,
    output:
        manifest=f"results/data/{DATASET}/manifest.parquet",
        summary=f"results/data/{DATASET}/split_summary.csv",
    log:
        f"logs/split_dataset/{DATASET}.log",
    localrule: True
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        split=config["split"],
    script:
        "../scripts/split_dataset.py"


# the manifest says when the images changed (the cache checks each file's sha256 against it)
rule cache_images:
    input:
        manifest=rules.split_dataset.output.manifest,
        root=DATASET_ROOT_INPUT,
    output:
        cache=f"results/data/{DATASET}/cache/{{split}}.npy",
    log:
        f"logs/cache_images/{DATASET}_{{split}}.log",
    benchmark:
        f"results/benchmarks/cache_images/{DATASET}_{{split}}.tsv"
    conda:
        "../envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        split="{split}",
        image_size=config["dataset"]["image_size"],
        resize=config["dataset"]["resize"],
    script:
        "../scripts/cache_images.py"


# Which dataset each folder of the results tree was made from (asked for by `all` and
# version_<name>; nothing reads it, so deleting it reruns nothing else). A run of another dataset's
# config that would write into one of those folders is refused while the workflow is parsed
# (claim_results_folders).
rule results_stamp:
    output:
        stamp="results/.tracinflow-run.json",
    log:
        "logs/results_stamp.log",
    localrule: True
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        folders=lambda wildcards: RESULTS_FOLDERS,
    script:
        "../scripts/results_stamp.py"
