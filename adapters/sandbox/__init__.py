"""Run untrusted Python (model-written code) in a separate, resource-limited, isolated process.

Never executes the code in the caller's process. The caller starts one long-lived *server* (the
script ``_server.py``, as the caller's user) and asks it over a socketpair for each run; the server
forks a per-run supervisor that isolates and runs the program. Forking from a warm server instead of
starting a Python supervisor per run halves the cost of a check. See docs/sandbox.md for the
guarantees.

One concept per module; this package re-exports the public names:

- ``_runs``: ``run_program``, ``check_completions``, ``probe``, ``set_weak_isolation``: one run from the
  caller's side (limits, output cap, deadline, kill)
- ``_client``: the caller's end of the fork server
- ``_server``: the fork server and what it forks: namespaces, mounts, rlimits, uid drop (standard
  library only, as it runs as a script)
- ``_uids``: a leased unprivileged uid per concurrent run
- ``_results``: ``SandboxResult``, ``SandboxError``, and how the server's report becomes a result
"""

from adapters.sandbox._client import SANDBOX_ENV
from adapters.sandbox._results import SandboxError, SandboxResult, Status
from adapters.sandbox._runs import _KILL_GRACE_S as _KILL_GRACE_S  # tests bound run durations with it
from adapters.sandbox._runs import (
    PRIVATE_DIRS,
    check_completions,
    missing_isolation,
    probe,
    run_program,
    set_weak_isolation,
)
from adapters.sandbox._uids import UID_RANGE
from adapters.sandbox._uids import _processes_of_uid as _processes_of_uid  # tests look for leftovers with it

__all__ = [
    "PRIVATE_DIRS",
    "SANDBOX_ENV",
    "UID_RANGE",
    "SandboxError",
    "SandboxResult",
    "Status",
    "check_completions",
    "missing_isolation",
    "probe",
    "run_program",
    "set_weak_isolation",
]
