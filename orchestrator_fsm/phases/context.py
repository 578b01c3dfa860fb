"""The run's context under its former name: :mod:`orchestrator_fsm.run_context` owns
``RunContext`` and ``Dependencies`` (below the lifecycle, which reads them too) and
:mod:`orchestrator_fsm.run_log` owns ``LOGGER_NAME``. Kept for the modules that still
import them from here."""

from __future__ import annotations

from orchestrator_fsm.run_context import Dependencies, RunContext
from orchestrator_fsm.run_log import LOGGER_NAME

__all__ = ["LOGGER_NAME", "Dependencies", "RunContext"]
