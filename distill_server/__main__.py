"""``python -m distill_server``: the same as the ``distill-server`` command."""

import sys

from distill_server.cli import main

sys.exit(main())
