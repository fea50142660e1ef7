"""``python -m numpyllm ...`` runs the ``numpyllm`` command."""

import sys

from numpyllm.cli import main

if __name__ == "__main__":
    sys.exit(main())
