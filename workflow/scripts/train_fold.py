from tracinflow._util.progress import start_log
from tracinflow.stages.rankings import train_fold

log = start_log(snakemake.log[0])
train_fold(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
