from tracinflow._util.progress import start_log
from tracinflow.stages.data import build_manifest

log = start_log(snakemake.log[0])
build_manifest(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
