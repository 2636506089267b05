from tracinflow._util.progress import start_log
from tracinflow.stages.influence import merge_topk

log = start_log(snakemake.log[0])
merge_topk(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
