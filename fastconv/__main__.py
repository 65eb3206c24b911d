"""``python -m fastconv`` runs the ``fastconv`` command (see fastconv.cli)."""
import sys

from .cli import main

sys.exit(main())
