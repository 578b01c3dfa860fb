"""The run's logger by name, and the mark that keeps a log line off the console.

Below the lifecycle and the phases: the recorder logs how the run ended with them,
phase 4 (``phases/logging.py``) attaches the handlers that honour them, and the
progress bar finds the run's console through the logger's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["FILE_ONLY", "FILE_ONLY_KEY", "LOGGER_NAME"]

#: The package's logger: the run's console and file handlers are attached here.
LOGGER_NAME: Final = "orchestrator_fsm"

#: The attribute a record logged with ``extra=FILE_ONLY`` carries.
FILE_ONLY_KEY: Final = "orchestrator_fsm_file_only"
#: ``logger.info(..., extra=FILE_ONLY)`` writes a line to the run's file and keeps it
#: off the console, unless the console's level is DEBUG (the full environment report
#: is logged this way).
FILE_ONLY: Final[Mapping[str, object]] = {FILE_ONLY_KEY: True}
