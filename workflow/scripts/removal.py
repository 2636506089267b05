from tracinflow._util.progress import start_log
from tracinflow.stages.evaluation import removal

log = start_log(snakemake.log[0])
removal(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
