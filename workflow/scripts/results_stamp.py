from tracinflow._util.progress import start_log
from tracinflow.stages.data import results_stamp

log = start_log(snakemake.log[0])
results_stamp(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
