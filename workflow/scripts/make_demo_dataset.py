from tracinflow.demo import write_demo_dataset
from tracinflow.progress import start_log

log = start_log(snakemake.log[0])
count = write_demo_dataset(snakemake.params.demo, snakemake.output.root, log=log)
log(f"wrote {count} demo images to {snakemake.output.root}")
