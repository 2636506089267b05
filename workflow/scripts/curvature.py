from tracinflow._util.progress import start_log
from tracinflow.stages.influence import curvature

log = start_log(snakemake.log[0])
curvature(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
