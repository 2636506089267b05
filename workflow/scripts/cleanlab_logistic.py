from tracinflow._util.progress import start_log
from tracinflow.stages.rankings import cleanlab_logistic

log = start_log(snakemake.log[0])
cleanlab_logistic(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
