# One job per version and split extracts every checkpoint's factors: a job's start-up (Python,
# torch, the cached split) was half of a per-checkpoint job's time on 2 cores.
rule extract_factors:
    input:
        checkpoint_files=get_checkpoint_files,
        # the checkpoints' sha256, verified before one is loaded
        checkpoints=rules.train_model.output.checkpoints,
        manifest=rules.split_dataset.output.manifest,
        train_set=rules.build_train_set.output.train_set,
        cache=rules.cache_images.output.cache,
    output:
        factors=[
            directory(f"results/{{version}}/factors/{ckpt}/{{split}}")
            for ckpt in CHECKPOINTS
        ],
    log:
        "logs/extract_factors/{version}_{split}.log",
    benchmark:
        "results/benchmarks/extract_factors/{version}_{split}.tsv"
    wildcard_constraints:
        split="train|val|test",
    conda:
        "../envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(4000),
        runtime=60 * len(CHECKPOINTS),
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
