from tracinflow.noise import write_noise_detection
from tracinflow.progress import start_log

log = start_log(snakemake.log[0])
write_noise_detection(
    train_set_path=snakemake.input.train_set,
    self_influence_path=snakemake.input.self_influence,
    train_predictions_path=snakemake.input.train,
    error_self_influence_path=snakemake.input.error_self_influence,
    default=snakemake.params.default,
    out_csv=snakemake.output.table,
    out_png=snakemake.output.plot,
    seed=snakemake.params.seed,
    log=log,
)
