from pathlib import Path

from tracinflow.plots import write_version_plots
from tracinflow.progress import start_log

log = start_log(snakemake.log[0])
write_version_plots(
    reports_dir=Path(snakemake.input.cross).parent,
    topk_path=snakemake.input.topk,
    test_predictions_path=snakemake.input.test,
    manifest_path=snakemake.input.manifest,
    out_dir=Path(snakemake.output.distributions).parent,
    n_suspects=snakemake.params.suspects,
    top_n=snakemake.params.top_n,
    log=log,
)
