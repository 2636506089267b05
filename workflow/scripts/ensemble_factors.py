from tracinflow._util.progress import start_log
from tracinflow.stages.evaluation import ensemble_factors

log = start_log(snakemake.log[0])
ensemble_factors(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
