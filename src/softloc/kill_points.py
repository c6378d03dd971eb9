"""Named moments at which a test may kill the process, to check what a kill leaves behind.

The robustness tests start a command in a subprocess with ``SOFTLOC_TEST_KILL_AT=<name>`` (e.g.
``checkpoint:4``: right after the checkpoint of step 4 is complete) and the process kills
itself with SIGKILL when it reaches that moment, exactly as ``kill -9`` would: no clean-up
handler runs. Without the variable (always, outside tests) a kill point does nothing.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "SOFTLOC_TEST_KILL_AT"


def kill_point(name: str) -> None:
    """Kill this process with SIGKILL if ``SOFTLOC_TEST_KILL_AT`` names this moment."""
    if os.environ.get(ENV_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)
