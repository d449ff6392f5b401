"""Launching ltscale across processes: where this process sits in a distributed job.

``DistEnv.from_env()`` reads torchrun's or SLURM's variables (or says "one process"); the
``ddp`` backend (``ltscale/engine/ddp.py``) builds its process group from it. Launch with::

    torchrun --nproc-per-node 4 -m ltscale pretrain RECIPE key=value ...
    srun --ntasks-per-node 4 python -m ltscale pretrain RECIPE key=value ...
"""

from ltscale.core.dist_env import DistEnv, expand_nodelist

__all__ = ["DistEnv", "expand_nodelist"]
