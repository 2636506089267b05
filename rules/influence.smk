rule extract_factors:
    input:
        checkpoints="results/{version}/model/checkpoints.json",
        manifest=f"results/data/{DATASET}/manifest.parquet",
        train_set="results/{version}/train_set.parquet",
        cache=f"results/data/{DATASET}/cache/{{split}}.npy",
    output:
        factors=directory("results/{version}/factors/epoch_{epoch}/{split}"),
    log:
        "logs/extract_factors/{version}_epoch_{epoch}_{split}.log",
    benchmark:
        "results/benchmarks/extract_factors/{version}_epoch_{epoch}_{split}.tsv"
    wildcard_constraints:
        epoch=r"\d{3}",
        split="train|test",
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=60,
        gpu=GPU,
    params:
        checkpoint=lambda wildcards: f"results/{wildcards.version}/model/epoch_{wildcards.epoch}.pt",
        layers=lambda wildcards: influence_setting(wildcards.version, "layers"),
        target=lambda wildcards: influence_setting(wildcards.version, "target"),
        batch_size=lambda wildcards: influence_setting(wildcards.version, "batch_size"),
    script:
        "../workflow/scripts/extract_factors.py"


rule influence_shard:
    input:
        unpack(get_shard_factors),
    output:
        shard="results/{version}/influence/shards/t{t}_r{r}.parquet",
    log:
        "logs/influence_shard/{version}_t{t}_r{r}.log",
    benchmark:
        "results/benchmarks/influence_shard/{version}_t{t}_r{r}.tsv"
    wildcard_constraints:
        t=r"\d+",
        r=r"\d+",
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=60,
        gpu=GPU,
    params:
        k=lambda wildcards: influence_setting(wildcards.version, "top_k"),
        memory_mb=lambda wildcards: influence_setting(wildcards.version, "memory_mb"),
        tiles=lambda wildcards: influence_setting(wildcards.version, "shards"),
    script:
        "../workflow/scripts/influence_shard.py"


rule merge_topk:
    input:
        shards=get_shards,
        manifest=f"results/data/{DATASET}/manifest.parquet",
        test="results/{version}/predictions/test.parquet",
        train="results/{version}/predictions/train.parquet",
    output:
        parquet="results/{version}/influence/top_k_influences.parquet",
        csv="results/{version}/influence/top_k_influences.csv",
    log:
        "logs/merge_topk/{version}.log",
    localrule: True
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=30,
    params:
        k=lambda wildcards: influence_setting(wildcards.version, "top_k"),
    script:
        "../workflow/scripts/merge_topk.py"


rule self_influence:
    input:
        train=get_train_factors,
    output:
        self_influence="results/{version}/influence/self_influence.parquet",
        error_self_influence="results/{version}/influence/self_influence_error.parquet",
    log:
        "logs/self_influence/{version}.log",
    benchmark:
        "results/benchmarks/self_influence/{version}.tsv"
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=30,
    script:
        "../workflow/scripts/self_influence.py"
