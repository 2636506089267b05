from tracinflow._util.progress import start_log
from tracinflow.stages.train import download_weights

log = start_log(snakemake.log[0])
download_weights(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
