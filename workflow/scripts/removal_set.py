from tracinflow._util.progress import start_log
from tracinflow.stages.evaluation import removal_set

log = start_log(snakemake.log[0])
removal_set(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
