"""Pipeline stages: data, pretrain, finetune, evaluate. Each is callable alone (CLI) or from
``ltscale.pipeline.run_pipeline``."""
