"""Reproducing runs: the rerun bundle a run leaves, drift between two bundles, and the
comparison of two runs' metrics and checkpoints.

- :mod:`~orchestrator_fsm.reproduce.bundle` reads ``reports/rerun.json`` (what is
  needed to run a run again, and the environment it ran in as it was loaded), which
  phase 5 writes (:mod:`orchestrator_fsm.phases.bundle`);
- :mod:`~orchestrator_fsm.reproduce.drift` lists what differs between two bundles;
- :mod:`~orchestrator_fsm.reproduce.compare` compares two runs' ``metrics.jsonl`` and
  checkpoint files and gives a verdict (identical, within tolerance, diverged).

The ``orchestrator-fsm rerun`` and ``diff`` commands are built on these.
"""
