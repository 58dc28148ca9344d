"""``python -m fusedrnn.bench``: the same as the ``fusedrnn-bench`` console script."""

import sys

from .cli import main

sys.exit(main())
