from tracinflow._util.progress import start_log
from tracinflow.stages.reports import report_galleries

log = start_log(snakemake.log[0])
report_galleries(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
