"""``python -m ltscale …`` is the ``ltscale`` command; it is also what torchrun launches:

    torchrun --nproc-per-node 2 -m ltscale pretrain recipes/quickstart.yaml engine.backend=ddp
"""

import sys

from ltscale.cli import main

if __name__ == "__main__":
    sys.exit(main())
