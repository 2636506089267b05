from tracinflow._util.progress import start_log
from tracinflow.stages.reports import noise_detection

log = start_log(snakemake.log[0])
noise_detection(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
