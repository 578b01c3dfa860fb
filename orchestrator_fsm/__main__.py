"""``python -m orchestrator_fsm``: the same command as ``orchestrator-fsm``."""

from __future__ import annotations

from orchestrator_fsm.cli.main import console

if __name__ == "__main__":
    console()
