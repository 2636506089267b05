from pathlib import Path

from tracinflow.progress import start_log
from tracinflow.reports import write_version_reports

log = start_log(snakemake.log[0])
write_version_reports(
    version=snakemake.wildcards.version,
    manifest_path=snakemake.input.manifest,
    predictions={"train": snakemake.input.train, "test": snakemake.input.test},
    topk_path=snakemake.input.topk,
    self_influence_path=snakemake.input.self_influence,
    error_self_influence_path=snakemake.input.error_self_influence,
    checkpoints_path=snakemake.input.checkpoints,
    metrics_path=snakemake.input.metrics,
    out_dir=Path(snakemake.output.text).parent,
    ranking=snakemake.params.ranking,
    top_n=snakemake.params.top_n,
    k=snakemake.params.k,
    log=log,
)
