from tracinflow._util.progress import start_log
from tracinflow.stages.evaluation import brittleness

log = start_log(snakemake.log[0])
brittleness(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
