# One named target per version, so `snakemake version_<name>` builds everything of that version
# (and of a version it is built from: a cleaning source, a noise reference; nothing else). The
# rules are generated from config, so each one's name is fixed at parse time and
# `snakemake --list-target-rules` shows them.
for version_name in VERSIONS:

    rule:
        name:
            f"version_{version_name}"
        input:
            get_version_outputs(version_name),
            rules.results_stamp.output.stamp,
        localrule: True


rule cross_version:
    input:
        unpack(get_cross_version_inputs),
        manifest=rules.split_dataset.output.manifest,
    output:
        summary=report(
            "results/cross_version/summary.md",
            caption="../report/cross_version.rst",
            category="Cross-version",
        ),
        performance=report(
            "results/cross_version/performance.csv",
            caption="../report/cross_version.rst",
            category="Cross-version",
        ),
        performance_plot=report(
            "results/cross_version/performance.png",
            caption="../report/cross_version.rst",
            category="Cross-version",
        ),
        statistics_plot=report(
            "results/cross_version/influence_statistics.png",
            caption="../report/cross_version.rst",
            category="Cross-version",
        ),
        registry="results/cross_version/version_registry.json",
        cleaning="results/cross_version/cleaning.csv",
        persistent="results/cross_version/persistent_mispredictions.csv",
        influencers="results/cross_version/consistent_influencers.csv",
        candidates="results/cross_version/shared_mislabel_candidates.csv",
        statistics="results/cross_version/influence_statistics.csv",
        pairs="results/cross_version/confused_pairs.csv",
    log:
        "logs/cross_version/cross_version.log",
    localrule: True
    conda:
        "../envs/tracinflow.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=30,
    params:
        versions=list(VERSIONS),
        settings=get_cross_version_settings(),
        min_versions=config["cross_version"]["min_versions"],
        top=config["cross_version"]["top"],
    script:
        "../scripts/cross_version.py"
