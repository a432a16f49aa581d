"""``python -m nfcourse``: the command line (:mod:`nfcourse.cli`)."""

import sys

from nfcourse.cli import main

if __name__ == "__main__":
    sys.exit(main())
