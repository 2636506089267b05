"""The workflow's file formats and what several stages read the same way, below the stages.

``checkpoints`` (model files: checkpoints, a training run's resume state, pretrained backbone
weights), ``factor_store`` (factor folders and the curvature file) and ``common`` (the image cache,
a version's rows of a split, report CSVs, a rule's optional inputs). The stages, the Python API and
the benchmarks read and write these files through them; nothing here imports the stages.
"""
