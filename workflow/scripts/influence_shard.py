from tracinflow.progress import start_log
from tracinflow.stages import influence_shard

log = start_log(snakemake.log[0])
tiles = snakemake.params.tiles
influence_shard(
    list(snakemake.input.test),
    list(snakemake.input.train),
    (int(snakemake.wildcards.t), int(snakemake.wildcards.r)),
    (tiles["test"], tiles["train"]),
    snakemake.output.shard,
    k=snakemake.params.k,
    memory_mb=snakemake.params.memory_mb,
    threads=snakemake.threads,
    log=log,
)
