from tracinflow._util.progress import start_log
from tracinflow.stages.rankings import validation_influence

log = start_log(snakemake.log[0])
validation_influence(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
