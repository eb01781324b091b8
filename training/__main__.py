"""`python -m training ...` is the same command as `python -m training.train ...`."""

import sys

from training.train import main

sys.exit(main())
