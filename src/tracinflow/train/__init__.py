"""Training's domain: the network (backbone and head), the per-sample loss, batches and
augmentation of the image cache, two-stage training, predictions."""
