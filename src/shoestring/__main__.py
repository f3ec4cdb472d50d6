"""``python -m shoestring`` is the same as the ``shoestring`` command."""

import sys

from shoestring.cli import main

if __name__ == "__main__":
    sys.exit(main())
