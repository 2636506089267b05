from tracinflow.progress import start_log
from tracinflow.stages import merge_version_topk

log = start_log(snakemake.log[0])
merge_version_topk(
    list(snakemake.input.shards),
    snakemake.params.k,
    snakemake.input.manifest,
    {"test": snakemake.input.test, "train": snakemake.input.train},
    {"parquet": snakemake.output.parquet, "csv": snakemake.output.csv},
    log=log,
)
