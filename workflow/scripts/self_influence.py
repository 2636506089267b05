from tracinflow.progress import start_log
from tracinflow.stages import version_self_influence

log = start_log(snakemake.log[0])
version_self_influence(
    list(snakemake.input.train),
    snakemake.output.self_influence,
    snakemake.output.error_self_influence,
    log=log,
)
