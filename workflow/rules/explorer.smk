rule explorer:
    input:
        unpack(get_explorer_inputs),
        manifest=rules.split_dataset.output.manifest,
        train_set=rules.build_train_set.output.train_set,
        train=rules.predict.output.train,
        test=rules.predict.output.test,
        topk=rules.merge_topk.output.parquet,
        suspicion=rules.suspicion_scores.output.scores,
        # the thumbnails come from the original image files, each checked against the manifest's
        # sha256 (the manifest, not the folder's time, says when they changed)
        root=DATASET_ROOT_INPUT,
    output:
        # a folder: index.html opens from the file system (its script, style, data and
        # thumbnails beside it)
        explorer=directory("results/{version}/explorer"),
    log:
        "logs/explorer/{version}.log",
    benchmark:
        "results/benchmarks/explorer/{version}.tsv"
    conda:
        "../envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(4000),
        runtime=60,
    params:
        version="{version}",
        ranking=setting("reports", "ranking"),
        method=lambda wildcards: version_method(VERSIONS[wildcards.version]),
        ensemble=setting("influence", "ensemble"),
        top=setting("reports", "explorer", "top"),
        thumbnail_px=setting("reports", "explorer", "thumbnail_px"),
        planted=lambda wildcards: has_planted_noise(wildcards.version),
        compare=get_explorer_versions,
    script:
        "../scripts/explorer.py"
