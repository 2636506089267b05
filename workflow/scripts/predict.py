from tracinflow.progress import start_log
from tracinflow.stages import predict_version

log = start_log(snakemake.log[0])
summary = predict_version(
    snakemake.input.manifest,
    snakemake.input.train_set,
    {split: snakemake.input[split] for split in ("train", "val", "test")},
    snakemake.input.best,
    dict(snakemake.output.items()),
    threads=snakemake.threads,
    batch_size=snakemake.params.batch_size,
    log=log,
)
log(f"test accuracy {summary['test']['accuracy']:.4f}")
