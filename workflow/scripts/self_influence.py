from tracinflow._util.progress import start_log
from tracinflow.stages.influence import self_influence

log = start_log(snakemake.log[0])
self_influence(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
