rule report_tables:
    input:
        manifest=f"results/data/{DATASET}/manifest.parquet",
        train="results/{version}/predictions/train.parquet",
        test="results/{version}/predictions/test.parquet",
        metrics="results/{version}/metrics.json",
        checkpoints="results/{version}/model/checkpoints.json",
        topk="results/{version}/influence/top_k_influences.parquet",
        self_influence="results/{version}/influence/self_influence.parquet",
        error_self_influence="results/{version}/influence/self_influence_error.parquet",
    output:
        text=report(
            "results/{version}/reports/influence_report.txt",
            caption="../workflow/report/influence_report.rst",
            category="{version}",
            subcategory="Influence",
        ),
        cross=report(
            "results/{version}/reports/misprediction_cross_analysis.csv",
            caption="../workflow/report/misprediction_cross_analysis.rst",
            category="{version}",
            subcategory="Mispredictions",
        ),
        cross_parquet="results/{version}/reports/misprediction_cross_analysis.parquet",
        inspection=report(
            "results/{version}/reports/mislabeled_inspection_report.csv",
            caption="../workflow/report/mislabeled_inspection_report.rst",
            category="{version}",
            subcategory="Mislabel suspects",
        ),
        influential=report(
            "results/{version}/reports/influential_samples.csv",
            caption="../workflow/report/influential_samples.rst",
            category="{version}",
            subcategory="Influence",
        ),
        class_influence=report(
            "results/{version}/reports/class_influence.csv",
            caption="../workflow/report/class_influence.rst",
            category="{version}",
            subcategory="Influence",
        ),
    log:
        "logs/report_tables/{version}.log",
    benchmark:
        "results/benchmarks/report_tables/{version}.tsv"
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=30,
    params:
        ranking=lambda wildcards: report_setting(wildcards.version, "ranking"),
        top_n=lambda wildcards: report_setting(wildcards.version, "top_n"),
        k=lambda wildcards: influence_setting(wildcards.version, "top_k"),
    script:
        "../workflow/scripts/report_tables.py"


rule report_plots:
    input:
        manifest=f"results/data/{DATASET}/manifest.parquet",
        test="results/{version}/predictions/test.parquet",
        topk="results/{version}/influence/top_k_influences.parquet",
        cross="results/{version}/reports/misprediction_cross_analysis.csv",
        inspection="results/{version}/reports/mislabeled_inspection_report.csv",
        influential="results/{version}/reports/influential_samples.csv",
        class_influence="results/{version}/reports/class_influence.csv",
    output:
        distributions=report(
            "results/{version}/reports/dashboards/influence_distributions.png",
            caption="../workflow/report/influence_distributions.rst",
            category="{version}",
            subcategory="Influence",
        ),
        top_influencers=report(
            "results/{version}/reports/dashboards/top_influencers.png",
            caption="../workflow/report/top_influencers.rst",
            category="{version}",
            subcategory="Influence",
        ),
        heatmap=report(
            "results/{version}/reports/dashboards/class_influence_heatmap.png",
            caption="../workflow/report/class_influence_heatmap.rst",
            category="{version}",
            subcategory="Influence",
        ),
        self_influence=report(
            "results/{version}/reports/dashboards/self_influence_distribution.png",
            caption="../workflow/report/self_influence_distribution.rst",
            category="{version}",
            subcategory="Mislabel suspects",
        ),
    log:
        "logs/report_plots/{version}.log",
    benchmark:
        "results/benchmarks/report_plots/{version}.tsv"
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=30,
    params:
        top_n=lambda wildcards: report_setting(wildcards.version, "top_n"),
        suspects=lambda wildcards: report_setting(wildcards.version, "galleries")[
            "suspects"
        ],
    script:
        "../workflow/scripts/report_plots.py"


rule report_galleries:
    input:
        manifest=f"results/data/{DATASET}/manifest.parquet",
        test="results/{version}/predictions/test.parquet",
        cross="results/{version}/reports/misprediction_cross_analysis.csv",
        inspection="results/{version}/reports/mislabeled_inspection_report.csv",
    output:
        galleries=report(
            directory("results/{version}/reports/galleries"),
            patterns=["{name}.png"],
            caption="../workflow/report/galleries.rst",
            category="{version}",
            subcategory="Galleries",
        ),
    log:
        "logs/report_galleries/{version}.log",
    benchmark:
        "results/benchmarks/report_galleries/{version}.tsv"
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=30,
    params:
        dataset_root=DATASET_ROOT,
        galleries=lambda wildcards: report_setting(wildcards.version, "galleries"),
    script:
        "../workflow/scripts/report_galleries.py"


rule noise_detection:
    input:
        train_set="results/{version}/train_set.parquet",
        self_influence="results/{version}/influence/self_influence.parquet",
        error_self_influence="results/{version}/influence/self_influence_error.parquet",
        train="results/{version}/predictions/train.parquet",
    output:
        table=report(
            "results/{version}/reports/noise_detection.csv",
            caption="../workflow/report/noise_detection.rst",
            category="{version}",
            subcategory="Mislabel suspects",
        ),
        plot=report(
            "results/{version}/reports/noise_detection.png",
            caption="../workflow/report/noise_detection.rst",
            category="{version}",
            subcategory="Mislabel suspects",
        ),
    log:
        "logs/noise_detection/{version}.log",
    localrule: True
    conda:
        "../workflow/envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=10,
    params:
        default=lambda wildcards: report_setting(wildcards.version, "ranking"),
        seed=lambda wildcards: VERSIONS[wildcards.version]["seed"],
    script:
        "../workflow/scripts/noise_detection.py"
