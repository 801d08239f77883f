"""What a run produced: the result and error types, and how the server's report becomes a result.

The server side writes key=value lines to a private pipe (``_server._Report``); the caller parses
them together with the program's output into one SandboxResult with a status and a reason.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.sandbox._server import _NAMESPACES

Status = Literal["passed", "failed", "timeout", "output_limit", "error"]


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    returncode: int | None  # the program's exit code, or -signal; None when it never ran
    stdout_tail: str
    stderr_tail: str
    duration_s: float
    reason: str = ""
    isolation: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not the program's fault)."""


def _tail(data: bytes | bytearray, limit: int) -> str:
    return bytes(data[-limit:]).decode("utf-8", errors="replace")


def _parse_report(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        out[key] = f"{out[key]}; {value}" if key in out and key in ("note", "error") else value
    return out


def _isolation(rep: dict[str, str], uid: int) -> dict[str, Any]:
    iso: dict[str, Any] = {name: rep.get(name) == "1" for name in ("user_ns", *_NAMESPACES)}
    iso["uid_drop"] = rep.get("uid_drop") == "1"
    iso["uid"] = int(rep["uid"]) if "uid" in rep else os.geteuid()
    iso["leased_uid"] = uid if uid >= 0 else None
    iso["no_new_privs"] = rep.get("no_new_privs") == "1"
    iso["readonly_root"] = rep.get("readonly_root") == "1"
    iso["private_tmp"] = [p for p in rep.get("private_tmp", "").split(",") if p]
    iso["masked"] = [p for p in rep.get("masked", "").split(",") if p]
    iso["rlimits"] = rep.get("rlimits", "")
    iso["swept"] = rep.get("swept") == "1"
    if "note" in rep:
        iso["notes"] = rep["note"]
    return iso


def _classify(
    rep: dict[str, str],
    out: bytes | bytearray,
    err: bytes | bytearray,
    over: list[str],
    marker: str,
    timeout_s: float,
    setup_s: float,
) -> tuple[Status, int | None, str]:
    if "error" in rep:
        return "error", None, f"sandbox setup failed: {rep['error']}"
    if "exec" not in rep:
        return "error", None, f"sandbox did not start the program: {_why_not_started(rep, err, over, setup_s)}"
    returncode = -int(rep["signal"]) if "signal" in rep else int(rep["exit"]) if "exit" in rep else None
    capped = [name for name in over if name in ("stdout", "stderr")]
    if capped:
        return "output_limit", returncode, f"{'/'.join(capped)} over the output cap"
    if rep.get("timeout") == "1" or "deadline" in over:
        return "timeout", returncode, f"wall-clock timeout ({timeout_s:g} s)"
    if returncode == -signal.SIGXCPU:
        return "timeout", returncode, "CPU-time limit"
    if returncode == 0 and f"\n{marker}\n".encode() in out:
        return "passed", returncode, ""
    if returncode is None:
        return "error", None, "no exit status from the sandbox"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        return "failed", returncode, f"killed by signal {-returncode} ({name})"
    if returncode == 0:
        return "failed", returncode, "exited 0 before the end of the program (no success marker)"
    return "failed", returncode, f"exit code {returncode}"


def _why_not_started(rep: dict[str, str], err: bytes | bytearray, over: list[str], setup_s: float) -> str:
    if rep.get("setup_timeout") == "1" or "setup_deadline" in over:
        return (
            f"its set-up (namespaces, mounts, privilege drop; milliseconds when the machine is idle) took over "
            f"{setup_s:g} s. The machine is overloaded: run fewer jobs or sandboxes at once."
        )
    return _tail(err, 500).strip() or "the supervisor ended without a report (killed from outside the sandbox?)"
