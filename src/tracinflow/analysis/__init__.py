"""Analysis of a version's results and of several versions: suspicion rankings, the detection of
planted label noise, metrics, the per-version reports and the cross-version comparison. Every
function takes and returns tables (DataFrames) and plain values; the stages read and write them."""
