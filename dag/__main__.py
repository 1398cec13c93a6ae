"""``python -m dag`` is the ``batch-imaging`` command."""

import sys

from dag.cli import main

sys.exit(main())
