from tracinflow._util.progress import start_log
from tracinflow.stages.reports import report_tables

log = start_log(snakemake.log[0])
report_tables(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
