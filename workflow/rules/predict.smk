rule predict:
    input:
        manifest=rules.split_dataset.output.manifest,
        train_set=rules.build_train_set.output.train_set,
        train=one(rules.cache_images.output.cache, split="train"),
        val=one(rules.cache_images.output.cache, split="val"),
        test=one(rules.cache_images.output.cache, split="test"),
        best=rules.train_model.output.best,
    output:
        train="results/{version}/predictions/train.parquet",
        val="results/{version}/predictions/val.parquet",
        test="results/{version}/predictions/test.parquet",
        metrics="results/{version}/metrics.json",
        false_test="results/{version}/mispredictions/false_predictions.csv",
        false_train="results/{version}/mispredictions/train_false_predictions.csv",
        confusion=report(
            "results/{version}/confusion_matrix.png",
            caption="../report/confusion_matrix.rst",
            category="{version}",
            subcategory="Predictions",
        ),
    log:
        "logs/predict/{version}.log",
    benchmark:
        "results/benchmarks/predict/{version}.tsv"
    conda:
        "../envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(4000),
        runtime=60,
        gpu=GPU,
    params:
        batch_size=setting("training", "batch_size"),
        device=setting("training", "device"),
        memory_format=setting("training", "memory_format"),
    script:
        "../scripts/predict.py"
