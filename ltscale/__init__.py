"""ltscale: self-supervised pretraining and robust fine-tuning on long-tailed, noisy-labelled images."""

from ltscale import logs

__version__ = "0.1.0"

logs.install()
