from tracinflow._util.progress import start_log
from tracinflow.stages.evaluation import evaluation_summary

log = start_log(snakemake.log[0])
evaluation_summary(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
