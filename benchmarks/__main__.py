"""``python -m benchmarks [NAME_SUBSTRING ...]``: see :mod:`benchmarks.runner`."""

import sys

from benchmarks.runner import main

sys.exit(main(sys.argv[1:]))
