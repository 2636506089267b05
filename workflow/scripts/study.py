from tracinflow._util.progress import start_log
from tracinflow.stages.study import study

log = start_log(snakemake.log[0])
study(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
