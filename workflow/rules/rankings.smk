# The suspicion rankings of a version: every one in one table (suspicion_scores.parquet), which the
# reports, the noise evaluation and the cleaning of other versions read.


rule cleanlab_logistic:
    input:
        manifest=rules.split_dataset.output.manifest,
        train_set=rules.build_train_set.output.train_set,
        train=one(rules.cache_images.output.cache, split="train"),
        weights=get_pretrained_weights,
    output:
        probs="results/{version}/rankings/cleanlab_logistic.parquet",
    log:
        "logs/cleanlab_logistic/{version}.log",
    benchmark:
        "results/benchmarks/cleanlab_logistic/{version}.tsv"
    conda:
        "../envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(4000),
        runtime=60,
        gpu=GPU,
    params:
        settings=get_training_settings,
        folds=setting("rankings", "cleanlab_folds"),
        seed=setting("seed"),
    script:
        "../scripts/cleanlab_logistic.py"


rule train_fold:
    input:
        manifest=rules.split_dataset.output.manifest,
        train_set=rules.build_train_set.output.train_set,
        train=one(rules.cache_images.output.cache, split="train"),
        val=one(rules.cache_images.output.cache, split="val"),
        weights=get_pretrained_weights,
    output:
        probs="results/{version}/rankings/kfold/fold_{fold}.parquet",
    log:
        "logs/train_fold/{version}_fold_{fold}.log",
    benchmark:
        "results/benchmarks/train_fold/{version}_fold_{fold}.tsv"
    wildcard_constraints:
        fold=r"\d+",
    conda:
        "../envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(8000),
        runtime=720,
        gpu=GPU,
    params:
        settings=get_training_settings,
        fold="{fold}",
        folds=setting("rankings", "kfold"),
        # not an output: the fold's training in progress, from which a killed job resumes
        scratch="results/{version}/rankings/kfold/.fold_{fold}",
    script:
        "../scripts/train_fold.py"


# another training of the version's labels (rankings.trajectory_runs), for its trajectory alone
rule train_run:
    input:
        manifest=rules.split_dataset.output.manifest,
        train_set=rules.build_train_set.output.train_set,
        train=one(rules.cache_images.output.cache, split="train"),
        val=one(rules.cache_images.output.cache, split="val"),
        weights=get_pretrained_weights,
    output:
        trajectory="results/{version}/rankings/runs/run_{run}.parquet",
    log:
        "logs/train_run/{version}_run_{run}.log",
    benchmark:
        "results/benchmarks/train_run/{version}_run_{run}.tsv"
    wildcard_constraints:
        run=r"[1-9]\d*",
    conda:
        "../envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(8000),
        runtime=720,
        gpu=GPU,
    params:
        settings=get_training_settings,
        run="{run}",
        # not an output: the run's training in progress, from which a killed job resumes
        scratch="results/{version}/rankings/runs/.run_{run}",
    script:
        "../scripts/train_run.py"


rule validation_influence:
    input:
        unpack(get_validation_factors),
        val_predictions=rules.predict.output.val,
        train_set=rules.build_train_set.output.train_set,
    output:
        validation="results/{version}/rankings/validation_influence.parquet",
    log:
        "logs/validation_influence/{version}.log",
    benchmark:
        "results/benchmarks/validation_influence/{version}.tsv"
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=60,
    script:
        "../scripts/validation_influence.py"


rule suspicion_scores:
    input:
        unpack(get_cleanlab_inputs),
        unpack(get_trajectory_runs),
        train_set=rules.build_train_set.output.train_set,
        self_influence=rules.self_influence.output.self_influence,
        error_self_influence=rules.self_influence.output.error_self_influence,
        curvature_self_influence=rules.self_influence.output.curvature_self_influence,
        train_predictions=rules.predict.output.train,
        trajectory=rules.train_model.output.trajectory,
        validation=rules.validation_influence.output.validation,
    output:
        scores="results/{version}/rankings/suspicion_scores.parquet",
    log:
        "logs/suspicion_scores/{version}.log",
    localrule: True
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    params:
        seed=setting("seed"),
    script:
        "../scripts/suspicion_scores.py"
