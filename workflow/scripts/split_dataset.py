from tracinflow._util.progress import start_log
from tracinflow.stages.data import split_dataset

log = start_log(snakemake.log[0])
split_dataset(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
