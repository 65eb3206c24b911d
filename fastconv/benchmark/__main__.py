"""``python -m fastconv.benchmark ...``: the same as ``fastconv bench ...``."""
import sys

from .cli import main

sys.exit(main())
