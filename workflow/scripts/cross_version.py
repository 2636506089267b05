from tracinflow._util.progress import start_log
from tracinflow.stages.versions import cross_version

log = start_log(snakemake.log[0])
cross_version(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
