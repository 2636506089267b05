from tracinflow._util.progress import start_log
from tracinflow.stages.train import build_train_set

log = start_log(snakemake.log[0])
build_train_set(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
