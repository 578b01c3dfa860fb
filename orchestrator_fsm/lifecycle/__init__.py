"""The lifecycle state machine: its transition table, the machine and the run record."""
