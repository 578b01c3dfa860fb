"""orchestrator-fsm: the lifecycle of an ML experiment as an explicit state machine."""

__version__ = "0.1.0"
