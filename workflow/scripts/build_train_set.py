from tracinflow.progress import start_log
from tracinflow.stages import build_version_train_set

log = start_log(snakemake.log[0])
clean = snakemake.params.clean
build_version_train_set(
    snakemake.input.manifest,
    snakemake.output.train_set,
    label_noise=snakemake.params.label_noise,
    clean=clean,
    reference_predictions=snakemake.input.get("reference"),
    source={
        "train_set": snakemake.input.get("source_train_set"),
        "self_influence": snakemake.input.get("source_self_influence"),
        "error_self_influence": snakemake.input.get("source_error_self_influence"),
        "predictions": snakemake.input.get("source_predictions"),
    },
    ranking=clean["ranking"] if clean else None,
    log=log,
)
