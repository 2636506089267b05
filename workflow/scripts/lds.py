from tracinflow._util.progress import start_log
from tracinflow.stages.evaluation import lds

log = start_log(snakemake.log[0])
lds(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
