"""``python -m impl.run``: see :mod:`impl.run`."""

import sys

from impl.run import main

if __name__ == "__main__":
    sys.exit(main())
