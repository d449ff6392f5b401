"""ltscale: self-supervised pretraining and robust fine-tuning on long-tailed, noisy-labelled images."""

from ltscale.core import logs
from ltscale.core.version import __version__  # noqa: F401

logs.install()
