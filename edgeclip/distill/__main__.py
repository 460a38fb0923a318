"""``python -m edgeclip.distill`` (also under ``torchrun``)."""

import sys

from .cli import main

sys.exit(main())
