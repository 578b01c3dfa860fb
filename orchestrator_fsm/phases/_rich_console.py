"""The run's console log handler on a terminal: rich, one line per record.

Imported by :mod:`orchestrator_fsm.phases.logging` only when stderr is a terminal, so
that a batch job (stderr a file or a pipe) never imports rich.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from rich.console import ConsoleRenderable
from rich.logging import RichHandler
from rich.text import Text

__all__ = ["RunConsoleHandler"]


class RunConsoleHandler(RichHandler):
    """Rich's handler, each record rendered as one line of text (time, level, message)
    instead of a table: wrapped at spaces only when longer than the terminal, a token
    longer than a line (a path, a run id) never cut, and printed above any progress
    bar live on the same console (see ``orchestrator_fsm.progress``, in ``progress_bar.py``)."""

    def render(
        self,
        *,
        record: logging.LogRecord,
        traceback: Any,
        message_renderable: ConsoleRenderable,
    ) -> ConsoleRenderable:
        line = Text(overflow="ignore")
        moment = datetime.fromtimestamp(record.created)
        line.append(moment.strftime("[%X] "), style="log.time")
        line.append_text(self.get_level_text(record))
        line.append(" ")
        if isinstance(message_renderable, Text):
            line.append_text(message_renderable)
        else:
            line.append(str(message_renderable))
        return line
