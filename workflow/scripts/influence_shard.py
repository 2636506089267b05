from tracinflow._util.progress import start_log
from tracinflow.stages.influence import influence_shard

log = start_log(snakemake.log[0])
influence_shard(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
