import pandas as pd

from tracinflow.data import build_cache
from tracinflow.progress import start_log

log = start_log(snakemake.log[0])
rows = build_cache(
    pd.read_parquet(snakemake.input.manifest),
    snakemake.input.root,
    snakemake.wildcards.split,
    snakemake.params.image_size,
    snakemake.output.cache,
    resize=snakemake.params.resize,
    workers=snakemake.threads,
    log=log,
)
log(f"cached {rows} {snakemake.wildcards.split} images")
