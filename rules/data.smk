if DEMO:

    rule make_demo_dataset:
        output:
            root=directory(DATASET_ROOT),
        log:
            "logs/make_demo_dataset.log",
        benchmark:
            "results/benchmarks/make_demo_dataset.tsv"
        conda:
            "../workflow/envs/tracinflow.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            demo=DEMO,
        script:
            "../workflow/scripts/make_demo_dataset.py"


rule build_manifest:
    input:
        root=DATASET_ROOT,
    output:
        images="results/data/{dataset}/images.parquet",
        rejected="results/data/{dataset}/rejected.csv",
        duplicates="results/data/{dataset}/duplicates.csv",
    log:
        "logs/build_manifest/{dataset}.log",
    benchmark:
        "results/benchmarks/build_manifest/{dataset}.tsv"
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        extensions=config["dataset"]["extensions"],
        class_names=config["dataset"]["class_names"],
    script:
        "../workflow/scripts/build_manifest.py"


rule split_dataset:
    input:
        images="results/data/{dataset}/images.parquet",
    output:
        manifest="results/data/{dataset}/manifest.parquet",
        summary="results/data/{dataset}/split_summary.csv",
    log:
        "logs/split_dataset/{dataset}.log",
    localrule: True
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        split=config["split"],
    script:
        "../workflow/scripts/split_dataset.py"


rule cache_images:
    input:
        manifest="results/data/{dataset}/manifest.parquet",
        root=DATASET_ROOT,
    output:
        cache="results/data/{dataset}/cache/{split}.npy",
    log:
        "logs/cache_images/{dataset}_{split}.log",
    benchmark:
        "results/benchmarks/cache_images/{dataset}_{split}.tsv"
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        image_size=config["dataset"]["image_size"],
        resize=config["dataset"]["resize"],
    script:
        "../workflow/scripts/cache_images.py"
