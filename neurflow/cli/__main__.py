"""``python -m neurflow.cli``: the same as the ``neurflow`` command."""

import sys

from .main import main

sys.exit(main())
