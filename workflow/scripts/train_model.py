from tracinflow._util.progress import start_log
from tracinflow.stages.train import train_model

log = start_log(snakemake.log[0])
train_model(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
