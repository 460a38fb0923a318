"""Distillation stage (the ``distill`` extra): train small CLIP students from a teacher.

Needs torch and transformers; nothing in ``edgeclip`` imports this package. Entry point:
``python -m edgeclip.distill`` (see ``cli.main``).
"""

import logging

# transformers imports torchao whenever it is installed (litert-torch brings it); torchao then
# logs "Failed to load ...so" for GPU kernels and torch's pytree warns about its enums. Neither
# concerns CPU conversion/training, so keep them out of the user's terminal.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
