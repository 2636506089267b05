from snakemake.utils import min_version

min_version("9.0")


# A config given with --configfile replaces the demo config instead of being merged into it (a
# merge would add the demo's versions to every run).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/factors.smk"
include: "rules/influence.smk"
include: "rules/rankings.smk"
include: "rules/reports.smk"
include: "rules/explorer.smk"
include: "rules/versions.smk"
include: "rules/study.smk"


# {results folder: the dataset it was made from}; a config of another dataset whose results would
# replace a folder's is refused here, before any job runs.
RESULTS_FOLDERS = claim_results_folders()


rule all:
    default_target: True
    input:
        get_final_outputs(),
    localrule: True
