from tracinflow._util.progress import start_log
from tracinflow.stages.rankings import suspicion_scores

log = start_log(snakemake.log[0])
suspicion_scores(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
