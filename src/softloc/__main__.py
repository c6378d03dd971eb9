"""``python -m softloc`` runs the ``softloc`` command."""

import sys

from softloc.cli import main

sys.exit(main())
