"""The workflow's file formats and the reading and writing several stages share, below the stages.

``checkpoints`` (model files: checkpoints, a training run's resume state, pretrained backbone
weights; a checkpoint loaded for inference), ``factor_store`` (factor folders, a checkpoint's
factors extracted into one, the curvature file), ``training`` (a training run writing its model
files, resumable) and ``common`` (the image cache, a version's rows of a split, report CSVs, a
rule's optional inputs). The stages, the Python API and the benchmarks read and write these files
through them; nothing here imports the stages, and a stage module imports no other stage module.
"""
