rule extract_factors:
    input:
        checkpoint=get_checkpoint,
        # the checkpoints' sha256, verified before one is loaded
        checkpoints=rules.train_model.output.checkpoints,
        manifest=rules.split_dataset.output.manifest,
        train_set=rules.build_train_set.output.train_set,
        cache=rules.cache_images.output.cache,
    output:
        factors=directory("results/{version}/factors/{ckpt}/{split}"),
    log:
        "logs/extract_factors/{version}_{ckpt}_{split}.log",
    benchmark:
        "results/benchmarks/extract_factors/{version}_{ckpt}_{split}.tsv"
    wildcard_constraints:
        ckpt=CHECKPOINT_PATTERN,
        split="train|val|test",
    conda:
        "../envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(4000),
        runtime=60,
        gpu=GPU,
    params:
        split="{split}",
        layers=setting("influence", "layers"),
        target=get_factor_target,
        batch_size=setting("influence", "batch_size"),
        device=setting("training", "device"),
        memory_format=setting("training", "memory_format"),
    script:
        "../scripts/extract_factors.py"
