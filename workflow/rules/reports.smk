rule report_tables:
    input:
        manifest=rules.split_dataset.output.manifest,
        rejected=rules.build_manifest.output.rejected,
        train=rules.predict.output.train,
        test=rules.predict.output.test,
        metrics=rules.predict.output.metrics,
        checkpoints=rules.train_model.output.checkpoints,
        topk=rules.merge_topk.output.parquet,
        suspicion=rules.suspicion_scores.output.scores,
    output:
        text=report(
            "results/{version}/reports/influence_report.txt",
            caption="../report/influence_report.rst",
            category="{version}",
            subcategory="Influence",
        ),
        cross=report(
            "results/{version}/reports/misprediction_cross_analysis.csv",
            caption="../report/misprediction_cross_analysis.rst",
            category="{version}",
            subcategory="Mispredictions",
        ),
        cross_parquet="results/{version}/reports/misprediction_cross_analysis.parquet",
        inspection=report(
            "results/{version}/reports/mislabeled_inspection_report.csv",
            caption="../report/mislabeled_inspection_report.rst",
            category="{version}",
            subcategory="Mislabel suspects",
        ),
        influential=report(
            "results/{version}/reports/influential_samples.csv",
            caption="../report/influential_samples.rst",
            category="{version}",
            subcategory="Influence",
        ),
        class_influence=report(
            "results/{version}/reports/class_influence.csv",
            caption="../report/class_influence.rst",
            category="{version}",
            subcategory="Influence",
        ),
    log:
        "logs/report_tables/{version}.log",
    benchmark:
        "results/benchmarks/report_tables/{version}.tsv"
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=30,
    params:
        version="{version}",
        ranking=setting("reports", "ranking"),
        top_n=setting("reports", "top_n"),
        k=setting("influence", "top_k"),
    script:
        "../scripts/report_tables.py"


rule report_plots:
    input:
        manifest=rules.split_dataset.output.manifest,
        test=rules.predict.output.test,
        topk=rules.merge_topk.output.parquet,
        inspection=rules.report_tables.output.inspection,
        influential=rules.report_tables.output.influential,
        class_influence=rules.report_tables.output.class_influence,
    output:
        distributions=report(
            "results/{version}/reports/dashboards/influence_distributions.png",
            caption="../report/influence_distributions.rst",
            category="{version}",
            subcategory="Influence",
        ),
        top_influencers=report(
            "results/{version}/reports/dashboards/top_influencers.png",
            caption="../report/top_influencers.rst",
            category="{version}",
            subcategory="Influence",
        ),
        heatmap=report(
            "results/{version}/reports/dashboards/class_influence_heatmap.png",
            caption="../report/class_influence_heatmap.rst",
            category="{version}",
            subcategory="Influence",
        ),
        self_influence=report(
            "results/{version}/reports/dashboards/self_influence_distribution.png",
            caption="../report/self_influence_distribution.rst",
            category="{version}",
            subcategory="Mislabel suspects",
        ),
    log:
        "logs/report_plots/{version}.log",
    benchmark:
        "results/benchmarks/report_plots/{version}.tsv"
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=30,
    params:
        top_n=setting("reports", "top_n"),
        suspects=setting("reports", "galleries", "suspects"),
    script:
        "../scripts/report_plots.py"


rule report_galleries:
    input:
        manifest=rules.split_dataset.output.manifest,
        test=rules.predict.output.test,
        cross=rules.report_tables.output.cross,
        inspection=rules.report_tables.output.inspection,
        # the thumbnails come from the original image files, each checked against the manifest's
        # sha256 (the manifest, not the folder's time, says when they changed)
        root=DATASET_ROOT_INPUT,
    output:
        galleries=report(
            directory("results/{version}/reports/galleries"),
            patterns=["{name}.png"],
            caption="../report/galleries.rst",
            category="{version}",
            subcategory="Galleries",
        ),
    log:
        "logs/report_galleries/{version}.log",
    benchmark:
        "results/benchmarks/report_galleries/{version}.tsv"
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=30,
    params:
        galleries=setting("reports", "galleries"),
    script:
        "../scripts/report_galleries.py"


rule noise_detection:
    input:
        train_set=rules.build_train_set.output.train_set,
        suspicion=rules.suspicion_scores.output.scores,
    output:
        table=report(
            "results/{version}/reports/noise_detection.csv",
            caption="../report/noise_detection.rst",
            category="{version}",
            subcategory="Mislabel suspects",
        ),
        plot=report(
            "results/{version}/reports/noise_detection.png",
            caption="../report/noise_detection.rst",
            category="{version}",
            subcategory="Mislabel suspects",
        ),
    log:
        "logs/noise_detection/{version}.log",
    localrule: True
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    params:
        default=setting("reports", "ranking"),
    script:
        "../scripts/noise_detection.py"
