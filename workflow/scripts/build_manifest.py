from tracinflow.data import find_duplicates, scan_image_folder
from tracinflow.io import write_csv, write_parquet
from tracinflow.progress import start_log

log = start_log(snakemake.log[0])
images, rejected = scan_image_folder(
    snakemake.input.root,
    snakemake.params.extensions,
    snakemake.params.class_names,
    workers=snakemake.threads,
    log=log,
)
duplicates = find_duplicates(images)
log(
    f"{len(images)} images in {images['class'].nunique()} classes, {len(rejected)} rejected, "
    f"{len(duplicates)} files in byte-identical duplicate groups"
)
for path, reason in rejected.itertuples(index=False):
    log(f"rejected {path}: {reason}")
write_csv(snakemake.output.rejected, rejected)
write_csv(snakemake.output.duplicates, duplicates)
write_parquet(snakemake.output.images, images)
