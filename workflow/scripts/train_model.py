from tracinflow.progress import start_log
from tracinflow.stages import train_version

log = start_log(snakemake.log[0])
summary = train_version(
    snakemake.input.manifest,
    snakemake.input.train_set,
    {"train": snakemake.input.train, "val": snakemake.input.val},
    snakemake.params.settings,
    out_dir=snakemake.output.checkpoints.rsplit("/", 1)[0],
    threads=snakemake.threads,
    log=log,
)
log(f"best epoch {summary['best_epoch']}, val loss {summary['best_val_loss']:.4f}")
