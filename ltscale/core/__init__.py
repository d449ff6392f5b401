"""The bottom layer: what every other layer uses and nothing of ltscale's own below it — errors,
atomic writes, hashing, locks, ownership records, logs, progress bars, the recipe ``Section``
base (strict types, suggestions) and the rank/world environment (torchrun, SLURM)."""
