rule build_train_set:
    input:
        unpack(get_train_set_inputs),
    output:
        train_set="results/{version}/train_set.parquet",
    log:
        "logs/build_train_set/{version}.log",
    localrule: True
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=10,
    params:
        label_noise=lambda wildcards: VERSIONS[wildcards.version]["label_noise"],
        clean=lambda wildcards: clean_setting(wildcards.version),
    script:
        "../workflow/scripts/build_train_set.py"


rule train_model:
    input:
        manifest=f"results/data/{DATASET}/manifest.parquet",
        train_set="results/{version}/train_set.parquet",
        train=f"results/data/{DATASET}/cache/train.npy",
        val=f"results/data/{DATASET}/cache/val.npy",
        weights=get_pretrained_weights,
    output:
        checkpoints="results/{version}/model/checkpoints.json",
        best="results/{version}/model/best.pt",
        history="results/{version}/model/history.csv",
        curves=report(
            "results/{version}/model/training_curves.png",
            caption="../workflow/report/training_curves.rst",
            category="{version}",
            subcategory="Training",
        ),
    log:
        "logs/train_model/{version}.log",
    benchmark:
        "results/benchmarks/train_model/{version}.tsv"
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=720,
        gpu=GPU,
    params:
        settings=get_training_settings,
    script:
        "../workflow/scripts/train_model.py"


rule predict:
    input:
        manifest=f"results/data/{DATASET}/manifest.parquet",
        train_set="results/{version}/train_set.parquet",
        train=f"results/data/{DATASET}/cache/train.npy",
        val=f"results/data/{DATASET}/cache/val.npy",
        test=f"results/data/{DATASET}/cache/test.npy",
        best="results/{version}/model/best.pt",
    output:
        train="results/{version}/predictions/train.parquet",
        val="results/{version}/predictions/val.parquet",
        test="results/{version}/predictions/test.parquet",
        metrics="results/{version}/metrics.json",
        false_test="results/{version}/mispredictions/false_predictions.csv",
        false_train="results/{version}/mispredictions/train_false_predictions.csv",
        confusion=report(
            "results/{version}/confusion_matrix.png",
            caption="../workflow/report/confusion_matrix.rst",
            category="{version}",
            subcategory="Predictions",
        ),
    log:
        "logs/predict/{version}.log",
    benchmark:
        "results/benchmarks/predict/{version}.tsv"
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=60,
        gpu=GPU,
    params:
        batch_size=lambda wildcards: VERSIONS[wildcards.version]["training"][
            "batch_size"
        ],
    script:
        "../workflow/scripts/predict.py"


rule download_weights:
    output:
        weights="resources/weights/{arch}-imagenet1k-v1.pth",
    log:
        "logs/download_weights/{arch}.log",
    wildcard_constraints:
        arch="resnet18|resnet34|resnet50",
    localrule: True
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    script:
        "../workflow/scripts/download_weights.py"
