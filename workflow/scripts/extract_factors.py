from tracinflow.progress import start_log
from tracinflow.stages import extract_version_factors, hooked_layers

log = start_log(snakemake.log[0])
extract_version_factors(
    snakemake.params.checkpoint,
    snakemake.input.manifest,
    snakemake.input.train_set,
    snakemake.input.cache,
    snakemake.wildcards.split,
    snakemake.output.factors,
    layers=hooked_layers(snakemake.params.layers),
    target=snakemake.params.target,
    batch_size=snakemake.params.batch_size,
    threads=snakemake.threads,
    log=log,
)
