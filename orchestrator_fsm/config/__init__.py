"""The recipe: one run's configuration, read from YAML, validated, typed and frozen.

A recipe is a YAML mapping of sections. The orchestrator owns three of them and
checks them strictly (an unknown key is an error that suggests the closest valid one):

- ``hardware``: ``device`` (auto, cpu, cuda, cuda:N, mps), ``num_workers``,
  ``cpu_threads``, ``reproducible``, ``deterministic_warn_only``, ``project_name``,
  ``allow_process_kill``;
- ``telemetry``: ``output_dir``, ``log_level``, ``log_interval``;
- ``infrastructure``: ``lock`` (``enabled``, ``timeout_s``, ``path``).

Every other top-level key belongs to the pipeline and is kept verbatim. Only
``dataset.name``, ``architecture.name`` (non-empty strings) and ``training.seed`` (an
integer in ``[0, 2**32)``) are required and typed.

Recipes are read with a safe loader only (tags that would build Python objects are
rejected) that reads numbers as YAML 1.2 and Hydra do (``1e-3`` is a float) and refuses
a key written twice in one mapping. Every problem - unreadable file, invalid YAML, bad
field, malformed override - is raised as one :class:`~orchestrator_fsm.errors.ConfigError` whose
``problems`` name each bad field by its dotted path.

Typical use::

    cfg = Config.from_recipe("recipe.yaml", overrides=["training.seed=7"])
    cfg.training.seed, cfg.hardware.effective_num_workers, cfg.training.get("epochs", 10)
"""

from orchestrator_fsm.config.sections import (
    ArchitectureConfig,
    Config,
    DatasetConfig,
    HardwareConfig,
    InfrastructureConfig,
    LockConfig,
    MissingKeyError,
    PipelineSection,
    TelemetryConfig,
    TrainingConfig,
)
from orchestrator_fsm.redaction import redact_secrets

__all__ = [
    "ArchitectureConfig",
    "Config",
    "DatasetConfig",
    "HardwareConfig",
    "InfrastructureConfig",
    "LockConfig",
    "MissingKeyError",
    "PipelineSection",
    "TelemetryConfig",
    "TrainingConfig",
    "redact_secrets",
]
