"""``python -m pytest_distill.local``: the same as the ``distill-server`` command."""

import sys

from pytest_distill.local.cli import main

sys.exit(main())
