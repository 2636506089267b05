from pathlib import Path

from tracinflow.plots import write_galleries
from tracinflow.progress import start_log

log = start_log(snakemake.log[0])
galleries = snakemake.params.galleries
write_galleries(
    reports_dir=Path(snakemake.input.cross).parent,
    manifest_path=snakemake.input.manifest,
    test_predictions_path=snakemake.input.test,
    dataset_root=snakemake.params.dataset_root,
    out_dir=snakemake.output.galleries,
    max_mispredictions=galleries["mispredictions"],
    n_suspects=galleries["suspects"],
    thumb_px=galleries["thumbnail_px"],
    log=log,
)
