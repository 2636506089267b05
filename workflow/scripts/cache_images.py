from tracinflow._util.progress import start_log
from tracinflow.stages.data import cache_images

log = start_log(snakemake.log[0])
cache_images(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
