# The counterfactual evaluation (config `evaluation:`, docs/evaluation.md): every retrain it needs
# is an ordinary version (eval_*, generated while the config is read), so Snakemake schedules,
# caches and reruns each; these rules trace the reference's factors, pick the removal sets and
# read what the retrains predict.
if EVALUATION:

    rule evaluation_factors:
        input:
            unpack(get_evaluation_factor_inputs),
        output:
            factors=directory("results/evaluation/factors/{ckpt}/{side}"),
        log:
            "logs/evaluation_factors/{ckpt}_{side}.log",
        benchmark:
            "results/benchmarks/evaluation_factors/{ckpt}_{side}.tsv"
        wildcard_constraints:
            ckpt=CHECKPOINT_PATTERN,
            side="|".join(EVAL_SIDES),
        conda:
            "../envs/tracinflow.yaml"
        threads: 2
        resources:
            mem_mb=memory_mb(4000),
            runtime=60,
            gpu=GPU,
        params:
            split=lambda wildcards: EVAL_SIDES[wildcards.side]["split"],
            target=lambda wildcards: EVAL_SIDES[wildcards.side]["target"],
            layers="head",
            batch_size=EVAL_SETTINGS["influence"]["batch_size"],
            device=EVAL_SETTINGS["training"]["device"],
            memory_format=EVAL_SETTINGS["training"]["memory_format"],
        script:
            "../scripts/evaluation_factors.py"

    rule ensemble_factors:
        input:
            unpack(get_ensemble_factor_inputs),
        output:
            factors=directory(
                "results/evaluation/factors/ensemble_s{seed}/{ckpt}/{side}"
            ),
        log:
            "logs/evaluation_factors/ensemble_s{seed}_{ckpt}_{side}.log",
        benchmark:
            "results/benchmarks/evaluation_factors/ensemble_s{seed}_{ckpt}_{side}.tsv"
        wildcard_constraints:
            seed=r"-?\d+",
            ckpt=CHECKPOINT_PATTERN,
            side="train|test",
        conda:
            "../envs/tracinflow.yaml"
        threads: 2
        resources:
            mem_mb=memory_mb(4000),
            runtime=60,
            gpu=GPU,
        params:
            split=lambda wildcards: EVAL_SIDES[wildcards.side]["split"],
            target="label",
            layers="head",
            batch_size=EVAL_SETTINGS["influence"]["batch_size"],
            device=EVAL_SETTINGS["training"]["device"],
            memory_format=EVAL_SETTINGS["training"]["memory_format"],
        script:
            "../scripts/ensemble_factors.py"

    rule lds:
        input:
            train=evaluation_factor_dirs("train"),
            test=evaluation_factor_dirs("test"),
            ensemble_train=ensemble_factor_dirs("train"),
            ensemble_test=ensemble_factor_dirs("test"),
            reference_test=one(rules.predict.output.test, version=EVAL_REFERENCE),
            train_sets=outputs_of(
                rules.build_train_set.output.train_set, EVAL_LDS_VERSIONS
            ),
            predictions=outputs_of(rules.predict.output.test, EVAL_LDS_VERSIONS),
        output:
            table=report(
                "results/evaluation/lds.csv",
                caption="../report/evaluation.rst",
                category="Evaluation",
            ),
            per_test="results/evaluation/lds_per_test.parquet",
            plot=report(
                "results/evaluation/lds.png",
                caption="../report/evaluation.rst",
                category="Evaluation",
            ),
        log:
            "logs/evaluation/lds.log",
        benchmark:
            "results/benchmarks/evaluation/lds.tsv"
        conda:
            "../envs/tracinflow.yaml"
        threads: 2
        resources:
            mem_mb=memory_mb(8000),
            runtime=120,
        params:
            retrains=[list(EVAL_LDS_VERSIONS[v]) for v in EVAL_LDS_VERSIONS],
            methods=EVALUATION["methods"],
            default=EVALUATION["default"],
            lds=EVALUATION["lds"],
            ensemble={
                "seeds": list(EVAL_ENSEMBLE),
                "methods": EVALUATION["ensemble"]["methods"],
            },
        script:
            "../scripts/lds.py"

    rule removal_set:
        input:
            train=evaluation_factor_dirs("train"),
            test=evaluation_factor_dirs("test_predicted"),
            # the brittleness test's images are scored at their label
            test_label=evaluation_factor_dirs("test"),
            reference_test=one(rules.predict.output.test, version=EVAL_REFERENCE),
            reference_train=one(rules.predict.output.train, version=EVAL_REFERENCE),
        output:
            removal="results/evaluation/removal_sets/{removal_set}.csv",
        log:
            "logs/evaluation/removal_set_{removal_set}.log",
        benchmark:
            "results/benchmarks/removal_set/{removal_set}.tsv"
        wildcard_constraints:
            removal_set="|".join(re.escape(name) for name in REMOVAL_SETS),
        conda:
            "../envs/tracinflow.yaml"
        threads: 1
        resources:
            mem_mb=memory_mb(4000),
            runtime=30,
        params:
            spec=lambda wildcards: REMOVAL_SETS[wildcards.removal_set],
        script:
            "../scripts/removal_set.py"

    rule removal:
        input:
            reference_test=one(rules.predict.output.test, version=EVAL_REFERENCE),
            full=outputs_of(rules.predict.output.test, EVAL_FULL.values()),
            removed=outputs_of(rules.predict.output.test, EVAL_REMOVALS),
            sets=[
                one(rules.removal_set.output.removal, removal_set=spec["set"])
                for spec in EVAL_REMOVALS.values()
            ],
        output:
            table=report(
                "results/evaluation/removal.csv",
                caption="../report/evaluation.rst",
                category="Evaluation",
            ),
            plot=report(
                "results/evaluation/removal.png",
                caption="../report/evaluation.rst",
                category="Evaluation",
            ),
        log:
            "logs/evaluation/removal.log",
        localrule: True
        conda:
            "../envs/tracinflow.yaml"
        threads: 1
        resources:
            mem_mb=memory_mb(2000),
            runtime=10,
        params:
            full_seeds=list(EVAL_FULL),
            removals=list(EVAL_REMOVALS.values()),
        script:
            "../scripts/removal.py"

    rule brittleness:
        input:
            reference_test=one(rules.predict.output.test, version=EVAL_REFERENCE),
            removed=outputs_of(rules.predict.output.test, EVAL_BRITTLE),
            sets=[
                one(rules.removal_set.output.removal, removal_set=spec["set"])
                for spec in EVAL_BRITTLE.values()
            ],
        output:
            table=report(
                "results/evaluation/brittleness.csv",
                caption="../report/evaluation.rst",
                category="Evaluation",
            ),
        log:
            "logs/evaluation/brittleness.log",
        localrule: True
        conda:
            "../envs/tracinflow.yaml"
        threads: 1
        resources:
            mem_mb=memory_mb(2000),
            runtime=10,
        params:
            removals=list(EVAL_BRITTLE.values()),
        script:
            "../scripts/brittleness.py"

    rule evaluation_summary:
        input:
            unpack(get_summary_inputs),
        output:
            summary=report(
                "results/evaluation/summary.md",
                caption="../report/evaluation.rst",
                category="Evaluation",
            ),
        log:
            "logs/evaluation/summary.log",
        localrule: True
        conda:
            "../envs/tracinflow.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=5,
        params:
            reference=EVAL_REFERENCE,
            evaluation={k: v for k, v in EVALUATION.items() if k != "default"},
            default=EVALUATION["default"],
        script:
            "../scripts/evaluation_summary.py"
