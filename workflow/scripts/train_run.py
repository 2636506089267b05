from tracinflow._util.progress import start_log
from tracinflow.stages.rankings import train_run

log = start_log(snakemake.log[0])
train_run(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
