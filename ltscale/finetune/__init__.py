"""Fine-tuning on a frozen encoder: feature cache and head training."""
