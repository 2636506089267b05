rule build_train_set:
    input:
        unpack(get_train_set_inputs),
    output:
        train_set="results/{version}/train_set.parquet",
    log:
        "logs/build_train_set/{version}.log",
    localrule: True
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    params:
        label_noise=setting("label_noise"),
        clean=get_clean_setting,
        subset=setting("subset"),
    script:
        "../scripts/build_train_set.py"


rule train_model:
    input:
        manifest=rules.split_dataset.output.manifest,
        train_set=rules.build_train_set.output.train_set,
        train=one(rules.cache_images.output.cache, split="train"),
        val=one(rules.cache_images.output.cache, split="val"),
        weights=get_pretrained_weights,
    output:
        # Every checkpoint traced, stage 1's (none by default) and stage 2's: early stopping
        # never ends before the last of these epochs.
        stage1_epochs=expand(
            "results/{{version}}/model/{ckpt}.pt", ckpt=STAGE1_CHECKPOINTS
        ),
        epochs=expand("results/{{version}}/model/{ckpt}.pt", ckpt=STAGE2_CHECKPOINTS),
        checkpoints="results/{version}/model/checkpoints.json",
        best="results/{version}/model/best.pt",
        history="results/{version}/model/history.csv",
        # every training image's loss, label margin and correctness per epoch (the trajectory
        # rankings: aum, loss_sum, forgetting)
        trajectory="results/{version}/model/trajectory.parquet",
        curves=report(
            "results/{version}/model/training_curves.png",
            caption="../report/training_curves.rst",
            category="{version}",
            subcategory="Training",
        ),
    log:
        "logs/train_model/{version}.log",
    benchmark:
        "results/benchmarks/train_model/{version}.tsv"
    conda:
        "../envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(8000),
        runtime=720,
        gpu=GPU,
    params:
        settings=get_training_settings,
        # Not an output: the checkpoints and the resume state of a run in progress, from which a
        # killed run resumes (Snakemake deletes a job's outputs before it reruns it); emptied and
        # removed once every output is in place.
        scratch="results/{version}/model/.training",
    script:
        "../scripts/train_model.py"


rule download_weights:
    output:
        weights="resources/weights/{arch}-imagenet1k-v1.pth",
    log:
        "logs/download_weights/{arch}.log",
    wildcard_constraints:
        arch="resnet18|resnet34|resnet50",
    localrule: True
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        arch="{arch}",
    script:
        "../scripts/download_weights.py"
