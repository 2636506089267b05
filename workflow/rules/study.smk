# The noise study (config `study:`): every version it generates is an ordinary version, so Snakemake
# schedules, caches and reruns each; this rule reads what the study compares.
if STUDY:

    # the versions that plant noise themselves (the cleaned ones inherit theirs)
    STUDY_NOISY = [
        n for n in VERSIONS if has_planted_noise(n) and not VERSIONS[n]["clean"]
    ]

    rule study:
        input:
            detection=expand(rules.noise_detection.output.table, version=STUDY_NOISY),
            metrics=expand(rules.predict.output.metrics, version=list(VERSIONS)),
            train_sets=expand(
                rules.build_train_set.output.train_set, version=list(VERSIONS)
            ),
        output:
            detection=report(
                f"results/{STUDY['name']}/detection.csv",
                caption="../report/study.rst",
                category="Noise study",
            ),
            detection_seeds=f"results/{STUDY['name']}/detection_per_seed.csv",
            cleaning=report(
                f"results/{STUDY['name']}/cleaning.csv",
                caption="../report/study.rst",
                category="Noise study",
            ),
            cleaning_seeds=f"results/{STUDY['name']}/cleaning_per_seed.csv",
            detection_plot=report(
                f"results/{STUDY['name']}/detection.png",
                caption="../report/study.rst",
                category="Noise study",
            ),
            cleaning_plot=report(
                f"results/{STUDY['name']}/cleaning.png",
                caption="../report/study.rst",
                category="Noise study",
            ),
            summary=report(
                f"results/{STUDY['name']}/summary.md",
                caption="../report/study.rst",
                category="Noise study",
            ),
        log:
            f"logs/{STUDY['name']}/study.log",
        localrule: True
        conda:
            "../envs/tracinflow.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            settings={
                name: {
                    "seed": VERSIONS[name]["seed"],
                    "label_noise": VERSIONS[name]["label_noise"],
                    "clean": recorded_clean(name),
                }
                for name in VERSIONS
            },
            noisy=STUDY_NOISY,
        script:
            "../scripts/study.py"
