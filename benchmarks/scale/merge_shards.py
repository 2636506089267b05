# The exact merge of the scale benchmark's shards (the workflow's merge_topk also writes a CSV with
# paths and labels, which generated factors do not have).
import pandas as pd

from tracinflow._util.files import write_parquet
from tracinflow._util.progress import start_log
from tracinflow.influence.shards import merge_topk

log = start_log(snakemake.log[0])
merged = merge_topk([pd.read_parquet(p) for p in snakemake.input.shards], snakemake.params.k)
write_parquet(snakemake.output[0], merged)
log(f"merged {len(snakemake.input.shards)} shards: {merged['test_idx'].nunique()} test rows")
