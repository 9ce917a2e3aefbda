"""``python -m mstar_fast ...`` is the ``mstar`` command; under torchrun every rank runs it:

    torchrun --nproc_per_node=2 -m mstar_fast run configs/demo.yaml

Sampling and PRM scoring are sharded over the ranks, samples are gathered on rank 0 (which writes the run
directory), and training runs under DDP or FSDP2 (``train.parallel``; :mod:`mstar_fast.train.distributed`;
under FSDP2 each rank samples from an unsharded inference copy, :mod:`mstar_fast.recipe.policy`).
"""

import sys

from mstar_fast.cli import main
from mstar_fast.train.distributed import destroy_distributed

if __name__ == "__main__":
    try:
        code = main()
    finally:
        destroy_distributed()
    sys.exit(code)
