"""python -m worker narrate IMAGE -o OUT.mp3 ... (see worker/cli.py)."""

import sys

from worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
