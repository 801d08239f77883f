"""What reaches the console: the runner's own messages, problems, progress and the summary; not library noise.

Every log record still goes to the run's `runner.log` (conf/hydra/job_logging/runner.yaml). On the
console, `ConsoleFilter` keeps the runner's records (INFO and up) and any library's errors; `verbose=true`
(or Hydra's `hydra.verbose`) lets everything through. Libraries that print through handlers of their own
(vLLM, MLflow, transformers) or through tqdm are pointed at the standard logging tree instead, so the
same rule applies to them, and Python warnings become log records (`py.warnings`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

_verbose = False
# `log.info(..., extra=FILE_ONLY)`: for runner.log only (detail, or an error the console prints otherwise).
FILE_ONLY = {"console": False}


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose
    if not verbose:
        # lm-eval's and vLLM's own tqdm bars ("Checking cached requests", "Processed prompts"); the runner
        # draws one live display of its own (runner/console/progress.py).
        os.environ.setdefault("TQDM_DISABLE", "1")


class ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _verbose:
            return True
        if not getattr(record, "console", True):
            return False
        if record.name == "runner" or record.name.startswith(("runner.", "adapters.")):
            return record.levelno >= logging.INFO
        return record.levelno >= logging.ERROR


class SweepConsoleFilter(logging.Filter):
    """The console of a sweep's own process (`python -m runner -m ...`; conf/hydra/hydra_logging/runner.yaml):
    Hydra's lines (`[HYDRA] Launching 6 jobs locally`), the runner's, and any library's errors. Library chatter
    there, such as matplotlib's `generated new fontManager` as the end-of-sweep report draws its first figure,
    goes to the sweep's `sweep.log` only (runner/sweep_callbacks.py). With `verbose=true` or `hydra.verbose=true`
    (the root logger at DEBUG), everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _verbose or logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        if record.name.split(".")[0] in ("hydra", "hydra_plugins", "runner", "adapters", "__main__"):
            return True
        return record.levelno >= logging.ERROR


class ConsoleFormatter(logging.Formatter):
    """`12:03:04 message`, with `warning:` / `error:` before problems; library records name their logger."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        source = "" if record.name.startswith(("runner", "adapters")) else f"[{record.name}] "
        text = f"{stamp} {level}{source}{record.getMessage()}"
        if record.exc_info and _verbose:
            text += "\n" + self.formatException(record.exc_info)
        return text


class ConsoleHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stdout is at the time: the live display (rich) redirects it while it runs,
    and records then appear above the bars instead of through them."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stdout)
        super().emit(record)


def route_library_logs() -> None:
    """Before vLLM, MLflow or torch are imported: their records go through the logging tree."""
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # else vLLM adds its own stdout handler
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # else MLflow adds its own stderr handler
    if not _verbose:
        # torch's C++ warnings (vLLM CPU's NUMA binding notes) are printed by C++, not by Python logging.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    logging.captureWarnings(True)


def route_engine_logs() -> None:
    """As an engine loads (it imports torch and transformers anyway): both libraries have stderr handlers
    of their own that do not propagate; take them off, so their records reach runner.log like the rest."""
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        import torch  # noqa: F401 - sets up torch's loggers, which are then rerouted below

        for name in list(logging.root.manager.loggerDict):
            logger = logging.getLogger(name)
            if name.split(".")[0] == "torch" and logger.handlers:
                logger.handlers.clear()
                logger.propagate = True
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
