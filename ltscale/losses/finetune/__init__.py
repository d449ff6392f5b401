"""The fine-tuning losses, one module each; every module here registers a loss and is imported
by the registry's discovery (``ltscale/losses/_registry.py``): helpers belong elsewhere."""
