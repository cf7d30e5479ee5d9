"""python -m configs.xla_flags TARGET: prints `export ENV='flags'` for a shell to eval."""

import sys

from configs.xla_flags import main

sys.exit(main(sys.argv))
