from tracinflow._util.progress import start_log
from tracinflow.stages.predict import predict

log = start_log(snakemake.log[0])
predict(snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
