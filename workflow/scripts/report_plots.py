from tracinflow._util.progress import start_log
from tracinflow.stages.reports import report_plots

log = start_log(snakemake.log[0])
report_plots(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
