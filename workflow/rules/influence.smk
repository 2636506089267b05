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
        "../envs/tracinflow.yaml"
    threads: 2
    resources:
        mem_mb=memory_mb(4000),
        runtime=60,
        gpu=GPU,
    params:
        test_tile="{t}",
        train_tile="{r}",
        k=setting("influence", "top_k"),
        memory_mb=setting("influence", "memory_mb"),
        precision=setting("influence", "precision"),
        method=setting("influence", "method"),
        ensemble=setting("influence", "ensemble"),
        tiles=setting("influence", "shards"),
        device=setting("training", "device"),
    script:
        "../scripts/influence_shard.py"


rule curvature:
    input:
        train=get_train_factors,
    output:
        inverses="results/{version}/influence/curvature.npz",
    log:
        "logs/curvature/{version}.log",
    benchmark:
        "results/benchmarks/curvature/{version}.tsv"
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=30,
    params:
        method=setting("influence", "method"),
        damping=setting("influence", "damping"),
        layers=setting("influence", "layers"),
    script:
        "../scripts/curvature.py"


rule merge_topk:
    input:
        shards=get_shards,
        manifest=rules.split_dataset.output.manifest,
        test=rules.predict.output.test,
        train=rules.predict.output.train,
    output:
        parquet="results/{version}/influence/top_k_influences.parquet",
        csv="results/{version}/influence/top_k_influences.csv",
    log:
        "logs/merge_topk/{version}.log",
    localrule: True
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=30,
    params:
        k=setting("influence", "top_k"),
    script:
        "../scripts/merge_topk.py"


rule self_influence:
    input:
        train=get_train_factors,
    output:
        self_influence="results/{version}/influence/self_influence.parquet",
        error_self_influence="results/{version}/influence/self_influence_error.parquet",
        curvature_self_influence="results/{version}/influence/self_influence_curvature.parquet",
    log:
        "logs/self_influence/{version}.log",
    benchmark:
        "results/benchmarks/self_influence/{version}.tsv"
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=30,
    params:
        damping=setting("influence", "damping"),
    script:
        "../scripts/self_influence.py"
