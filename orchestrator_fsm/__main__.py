"""``python -m orchestrator_fsm``: the same command as ``orchestrator-fsm``."""

from __future__ import annotations

if __name__ == "__main__":
    # First thing, like the console command: a SIGUSR1/SIGUSR2 during start-up is kept
    # for the run's callback, never fatal.
    from orchestrator_fsm.lifecycle.signals import hold_startup_signals

    hold_startup_signals()

from orchestrator_fsm.cli.main import console

if __name__ == "__main__":
    console()
