from tracinflow._util.progress import start_log
from tracinflow.stages.factors import extract_factors

log = start_log(snakemake.log[0])
extract_factors(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
