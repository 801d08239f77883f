"""SIGTERM and SIGHUP end a job the way Ctrl-C does.

Schedulers stop jobs with SIGTERM (SLURM preemption and time limits, Kubernetes, `timeout`), and a closed
terminal or ssh session sends SIGHUP. Python's default for both is to die on the spot: the MLflow run stays
RUNNING until another job reaps it, and the engine's processes are left to notice on their own. Here both
raise `Terminated` in the main thread, a KeyboardInterrupt, so every path that handles Ctrl-C (the run ended
KILLED, the engine shut down, answers already in the response cache kept) handles them too. The exit code
is the shell's for a death by that signal (128 + its number: 143, 129), so a scheduler reads it as such.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_received: int | None = None


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal other than Ctrl-C's."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated ({signal.Signals(signum).name})")


def install() -> None:
    """Turn SIGTERM and SIGHUP into `Terminated` (the main thread only: Python runs handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise)


def _raise(signum: int, frame: object) -> None:
    global _received
    if _received is not None:  # already stopping: a second signal must not break the clean-up
        return
    _received = signum
    raise Terminated(signum)


def received() -> int | None:
    """The stop signal this process got, if any: an engine error that follows it is its consequence (a
    scheduler signals the whole process group, so vLLM's engine process may stop first), not a bug."""
    return _received


def reason(exc: BaseException | None = None) -> str:
    """What ended the job, for the run's `error` tag and the console."""
    if isinstance(exc, Terminated):
        return str(exc)
    if _received is not None:
        return f"terminated ({signal.Signals(_received).name})"
    return "interrupted (Ctrl-C or SIGINT)"


def exit_code(exc: BaseException | None = None) -> int:
    """The shell's code for a process ended by the signal: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    signum = exc.signum if isinstance(exc, Terminated) else _received or signal.SIGINT
    return 128 + int(signum)


def stop_children(grace_s: float = 10.0) -> None:
    """End every process this one started and has not ended yet (an engine still loading, a replica, a
    self-started server, the sandbox): SIGTERM, then SIGKILL for those still there after `grace_s`. Also the
    watchdog's last act before it ends a hung job (runner/job/watchdog.py)."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
