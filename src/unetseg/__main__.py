"""``python -m unetseg``."""

import sys

from unetseg.cli import main

sys.exit(main())
