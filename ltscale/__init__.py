"""ltscale: self-supervised pretraining and robust fine-tuning on long-tailed, noisy-labelled images."""

__version__ = "0.1.0"
