from pathlib import Path

from tracinflow.cross_version import write_cross_version
from tracinflow.progress import start_log

log = start_log(snakemake.log[0])
write_cross_version(
    versions={
        name: {"settings": entry["settings"], "dir": Path("results") / name}
        for name, entry in snakemake.params.versions.items()
    },
    manifest_path=snakemake.input.manifest,
    out_dir=Path(snakemake.output.summary).parent,
    min_versions=snakemake.params.min_versions,
    top=snakemake.params.top,
    log=log,
)
