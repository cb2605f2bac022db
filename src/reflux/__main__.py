"""``python -m reflux``: the same as the ``reflux`` command."""
import sys

from reflux.cli import main

sys.exit(main())
