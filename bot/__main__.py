"""``python -m bot``: the same as ``kitbooth bot``."""

import sys

from kitbooth.cli import main

sys.exit(main(["bot", *sys.argv[1:]]))
