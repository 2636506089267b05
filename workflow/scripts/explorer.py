from tracinflow._util.progress import start_log
from tracinflow.stages.explorer import explorer

log = start_log(snakemake.log[0])
explorer(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
