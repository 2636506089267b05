import pandas as pd

from tracinflow.data import split_images, split_summary
from tracinflow.io import write_csv, write_parquet
from tracinflow.progress import start_log

log = start_log(snakemake.log[0])
settings = snakemake.params.split
manifest = split_images(pd.read_parquet(snakemake.input.images), settings, settings["seed"])
summary = split_summary(manifest)
log("images per class and split:\n" + summary.to_string(index=False))
write_csv(snakemake.output.summary, summary)
write_parquet(snakemake.output.manifest, manifest)
