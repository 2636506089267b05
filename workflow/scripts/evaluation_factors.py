from tracinflow._util.progress import start_log
from tracinflow.stages.evaluation import evaluation_factors

log = start_log(snakemake.log[0])
evaluation_factors(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
