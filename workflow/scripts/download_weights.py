from tracinflow.model import download_weights
from tracinflow.progress import start_log

log = start_log(snakemake.log[0])
path = download_weights(snakemake.wildcards.arch, snakemake.output.weights)
log(f"wrote {path}")
