import sys

from narrator_client.cli import main

sys.exit(main())
