"""An observer that mirrors each run into MLflow (``pip install orchestrator-fsm[mlflow]``).

Name it in the recipe (``telemetry.observers: [mlflow]``, or ``{mlflow: {tracking_uri:
..., experiment: ...}}``) or pass ``MlflowObserver(cfg)`` in ``observers=``. MLflow is
imported only when a run starts, so ``import orchestrator_fsm`` never imports it. Only
rank 0 talks to MLflow, once the run is READY (its lock held: a launch refused at the
lock makes no MLflow run). One MLflow run per run directory: its name is the run id; the
recipe, flattened and redacted, as params (cut to MLflow's length limits); every
``log_metrics`` / ``log_summary`` value as a metric (with its step); at the end the git
commit and branch as ``mlflow.source.git.*`` tags (when known), the run directory's
``reports/`` and ``logs/`` as artifacts, and the status: FINISHED for ``completed``,
FAILED for ``failed`` and ``timeout``, KILLED for ``interrupted``, ``cancelled`` and
``preempted`` (:data:`MLFLOW_STATUS`).

A run killed outright (SIGKILL, a lost node) leaves its MLflow run RUNNING. The record
keeps the tracking URI and the MLflow run id (``run.json``'s ``trackers``), so the next
run that starts in the same tracking store, or ``orchestrator-fsm inspect`` on the
crashed run directory, sets it to FAILED (:func:`reconcile_runs`,
:func:`reconcile_record`), with the run's last sign of life as its end time and a
``orchestrator_fsm.reconciled`` tag saying why.

Every attempt of the run logs into that one MLflow run: attempt N finds its id in the
record's ``trackers`` (carried from the earlier attempt), sets it RUNNING again and the
:data:`ATTEMPT_TAG` to N, sends only metric steps past the last one the MLflow run holds
per metric (MLflow cannot replace a point: a redone step keeps the earlier value), logs
params that differ from the MLflow run's as ``attempt<N>.<key>`` (MLflow refuses a new
value for a param) and at its end sets its own status.
"""

from __future__ import annotations

import importlib.util
import re
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from orchestrator_fsm._system import say_on_stderr
from orchestrator_fsm.layout import LOGS_DIR, REPORTS_DIR, output_root
from orchestrator_fsm.lifecycle.record import infer_status, read_run
from orchestrator_fsm.lifecycle.table import LifecycleState
from orchestrator_fsm.observers import Observer
from orchestrator_fsm.redaction import redact_secrets
from orchestrator_fsm.status import (
    CANCELLED,
    COMPLETED,
    CRASHED,
    FAILED,
    INTERRUPTED,
    PREEMPTED,
    TIMEOUT,
)

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.lifecycle.machine import TransitionRecord
    from orchestrator_fsm.lifecycle.record import RunRecord

__all__ = [
    "ABSENT",
    "ATTEMPT_PARAM_PREFIX",
    "ATTEMPT_TAG",
    "FLUSH_EVERY",
    "FLUSH_EVERY_S",
    "MLFLOW_STATUS",
    "RECONCILED_TAG",
    "RUN_DIR_TAG",
    "TRACKER",
    "MlflowObserver",
    "attempt_param",
    "flat_params",
    "reconcile_record",
    "reconcile_runs",
]

#: The MLflow run status for each final status of run.json (a crashed run: FAILED). A
#: run stopped from outside is KILLED (a person, a preemption, an unexplained signal); one
#: that hit its time limit is FAILED: like a failure, it needs the user to act (more time,
#: or checkpoints) before it can finish.
MLFLOW_STATUS: Final = {
    COMPLETED: "FINISHED",
    FAILED: "FAILED",
    INTERRUPTED: "KILLED",
    CANCELLED: "KILLED",
    PREEMPTED: "KILLED",
    TIMEOUT: "FAILED",
    CRASHED: "FAILED",
}
#: The tag naming the run directory an MLflow run mirrors.
RUN_DIR_TAG: Final = "orchestrator_fsm.run_dir"
#: The tag set on an MLflow run that reconciliation ended: why it did.
RECONCILED_TAG: Final = "orchestrator_fsm.reconciled"
#: The tracker's name in the record's ``trackers``.
TRACKER: Final = "mlflow"
#: The tag holding the number of the run's attempt that last logged into the MLflow run.
ATTEMPT_TAG: Final = "orchestrator_fsm.attempt"
#: Params an attempt logs where its config differs from the MLflow run's: ``attempt<N>.<key>``.
ATTEMPT_PARAM_PREFIX: Final = "attempt"
#: The value of :func:`attempt_param` for a key a later attempt's config no longer has.
ABSENT: Final = "<absent>"
_ATTEMPT_KEY: Final = re.compile(rf"{ATTEMPT_PARAM_PREFIX}\d+\.")

_MAX_KEY: Final = 250
_MAX_VALUE: Final = 6000
_BATCH: Final = 100
_MAX_METRICS_PER_BATCH: Final = 1000  # MLflow's own limit for one log_batch
#: ``log_metrics`` / ``log_summary`` calls buffered before one ``log_batch`` sends them.
FLUSH_EVERY: Final = 100
#: Seconds after which the next call sends what is buffered, however few calls.
FLUSH_EVERY_S: Final = 10.0


def flat_params(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``("training.seed", "7")`` for every leaf of ``data``, keys and values cut to
    MLflow's limits (250 and 6000 characters)."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flat_params(value, f"{name}.")
        else:
            yield name[:_MAX_KEY], str(value)[:_MAX_VALUE]


def _git_tags(root: Path) -> dict[str, str]:
    """The ``mlflow.source.git.*`` tags of the git state the run recorded."""
    from orchestrator_fsm.git_state import read_recorded_git_state

    try:
        state = read_recorded_git_state(root / REPORTS_DIR)
    except OSError:
        return {}
    return {} if state is None else state.source_tags()


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _last_sign_of_life(record: RunRecord) -> datetime:
    """When the run was last known alive: its end, heartbeat or last step (any rank's)."""
    candidates = [record.ended_at, record.heartbeat_at, *(t.started_at for t in record.transitions)]
    candidates += [rank.heartbeat_at or rank.started_at for rank in record.ranks]
    moments = [moment for moment in candidates if moment is not None]
    return max(moments) if moments else datetime.now(timezone.utc)


def _status_of(
    mlflow_run_id: str, mlflow_started_ms: int, run_dir: Path
) -> tuple[str, RunRecord] | None:
    """How the run an MLflow run (``mlflow_run_id``, started at ``mlflow_started_ms``)
    mirrors ended, from its run directory; None while it is still running or when the
    directory cannot be read (another host's)."""
    try:
        record = read_run(run_dir)
    except (OSError, ValueError):
        return None
    starts = [(_ms(a.started_at), a.status) for a in record.attempts if a.started_at]
    linked = record.trackers.get(TRACKER, {}).get("run_id") == mlflow_run_id
    if not linked and len(starts) > 1 and mlflow_started_ms < starts[-1][0]:
        # A later attempt reopened the directory and mirrors it elsewhere (an older
        # version made an MLflow run per attempt): this MLflow run mirrored an earlier
        # one, which is over, as that attempt's entry says (crashed when it does not).
        earlier = [status for started, status in starts if started <= mlflow_started_ms]
        status = earlier[-1] if earlier else CRASHED
        return (status if status in MLFLOW_STATUS else CRASHED), record
    status = infer_status(record)
    return (status, record) if status in MLFLOW_STATUS else None


def _end(client: Any, run: Any, status: str, record: RunRecord) -> str:
    """Set the MLflow run ``run`` to ``status``, ended at the run's last sign of life
    (never before the MLflow run started: it is made once the run is READY)."""
    mlflow_run_id = run.info.run_id
    mlflow_status = MLFLOW_STATUS[status]
    client.set_tag(
        mlflow_run_id,
        RECONCILED_TAG,
        f"the run directory {record.root} says {status}, but this MLflow run was still "
        f"RUNNING (its process ended without closing it); set {mlflow_status} by "
        "orchestrator-fsm",
    )
    ended = max(_ms(_last_sign_of_life(record)), run.info.start_time)
    client.set_terminated(mlflow_run_id, mlflow_status, end_time=ended)
    return mlflow_status


def reconcile_runs(client: Any, *, skip: str | None = None) -> dict[str, str]:
    """End every RUNNING MLflow run of ``client``'s store whose run directory (its
    ``orchestrator_fsm.run_dir`` tag) says the run is over: FAILED for a crashed or
    failed run, KILLED for an interrupted one, FINISHED for a completed one. Runs still
    live, runs of other tools and unreadable directories are left alone; ``skip`` is
    a run id never touched (the one being started). Returns ``{mlflow run id: status
    set}``."""
    from mlflow.entities import ViewType

    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    ended: dict[str, str] = {}
    if not experiments:
        return ended
    running = client.search_runs(
        experiments, filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    for run in running:
        run_dir = run.data.tags.get(RUN_DIR_TAG)
        if run.info.run_id == skip or not run_dir:
            continue
        found = _status_of(run.info.run_id, run.info.start_time, Path(run_dir))
        if found is not None:
            ended[run.info.run_id] = _end(client, run, *found)
    return ended


def reconcile_record(record: RunRecord) -> str | None:
    """End the MLflow run ``record`` names in its ``trackers`` when the run is over
    but the MLflow run is still RUNNING (see :func:`reconcile_runs`); the status set,
    or None when there was nothing to do. Imports mlflow: call it only for a record
    that names an MLflow run."""
    link = record.trackers.get(TRACKER)
    if not link or "run_id" not in link or "tracking_uri" not in link:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=link["tracking_uri"])
    run = client.get_run(link["run_id"])
    if run.info.status != "RUNNING":
        return None
    found = _status_of(link["run_id"], run.info.start_time, record.root)
    return None if found is None else _end(client, run, *found)


def _earlier_run(client: Any, tracking_uri: str, record: RunRecord) -> Any:
    """The MLflow run an earlier attempt of ``record``'s run made in this store (the
    record's ``trackers``), when it is still there and not deleted; else None."""
    from mlflow.exceptions import MlflowException

    link = record.trackers.get(TRACKER)
    if not link or link.get("tracking_uri") != tracking_uri or "run_id" not in link:
        return None
    try:
        run = client.get_run(link["run_id"])
    except MlflowException:
        return None
    return run if run.info.lifecycle_stage == "active" else None


def attempt_param(attempt: int, key: str) -> str:
    """The param that holds ``key``'s value in ``attempt`` when it differs from the
    MLflow run's own (``attempt2.training.seed``)."""
    return f"{ATTEMPT_PARAM_PREFIX}{attempt}.{key}"[:_MAX_KEY]


def _changed_params(
    logged: Mapping[str, str], params: Mapping[str, str], attempt: int
) -> dict[str, str]:
    """What ``attempt`` logs of its ``params`` into an MLflow run that has ``logged``:
    MLflow keeps a param's first value, so a key whose value differs (a forced resume
    with another config), or that is new or gone, is logged as
    :func:`attempt_param` (:data:`ABSENT` for a gone one); an unchanged one not again."""
    own = {key: value for key, value in logged.items() if not _ATTEMPT_KEY.match(key)}
    changed = {key: value for key, value in params.items() if own.get(key) != value}
    changed.update((key, ABSENT) for key in own if key not in params)
    return {attempt_param(attempt, key): value for key, value in sorted(changed.items())}


class MlflowObserver(Observer):
    """Mirrors a run into MLflow at ``tracking_uri`` (default ``sqlite:///<output_dir>/
    mlflow.db``, artifacts in ``<output_dir>/mlartifacts``), in ``experiment`` (default
    ``hardware.project_name``).

    Metrics are buffered and sent with one ``log_batch`` every ``flush_every`` calls
    (1: at each call), at the first call ``flush_every_s`` seconds after the last send,
    at every step of the machine and at the end (completed, failed or interrupted);
    a run killed outright (SIGKILL) loses what was not sent yet (``metrics.jsonl`` has
    it all)."""

    def __init__(
        self,
        cfg: Config,
        *,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        flush_every: int = FLUSH_EVERY,
        flush_every_s: float = FLUSH_EVERY_S,
    ) -> None:
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every must be an integer >= 1, got {flush_every!r}")
        if (
            isinstance(flush_every_s, bool)
            or not isinstance(flush_every_s, (int, float))
            or flush_every_s < 0
        ):
            raise ValueError(f"flush_every_s must be a number >= 0, got {flush_every_s!r}")
        if importlib.util.find_spec("mlflow") is None:
            raise ModuleNotFoundError(
                "mlflow is not installed; pip install 'orchestrator-fsm[mlflow]'"
            )
        output_dir = output_root(cfg.telemetry.output_dir)
        self._cfg = cfg
        self._artifacts = output_dir / "mlartifacts"
        self.tracking_uri = tracking_uri or f"sqlite:///{output_dir / 'mlflow.db'}"
        self.experiment = experiment or cfg.hardware.project_name
        self._client: Any = None
        self.run_id: str | None = None
        """The MLflow run's id, once the run started (rank 0 only)."""
        self._flush_every = flush_every
        self._flush_every_s = float(flush_every_s)
        self._pending: list[Any] = []
        self._pending_calls = 0
        self._flushed_at = time.monotonic()
        self._lock = threading.Lock()
        self._started: RunRecord | None = None
        self._sent_up_to: dict[str, int] = {}

    def run_started(self, record: RunRecord) -> None:
        # The MLflow run is made (or reopened) once the run is READY, its lock held: a
        # launch refused at the lock, or one that failed in start-up, makes none and
        # never touches the MLflow run of the attempt that holds the lock.
        if record.rank in (None, 0):
            self._started = record

    def _open(self, record: RunRecord) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        Path(self._artifacts).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        attempt = len(record.attempts) or 1
        params = dict(flat_params(redact_secrets(self._cfg.dump_serialized())))
        earlier = _earlier_run(client, self.tracking_uri, record)
        if earlier is None:
            found = client.get_experiment_by_name(self.experiment)
            experiment_id = (
                found.experiment_id
                if found is not None
                else client.create_experiment(
                    self.experiment, artifact_location=self._artifacts.as_uri()
                )
            )
            run_id = client.create_run(
                experiment_id, run_name=record.run_id, tags={RUN_DIR_TAG: str(record.root)}
            ).info.run_id
        else:
            # A later attempt of the same run: the same MLflow run, RUNNING again; its
            # metrics go on after the steps the earlier attempts sent.
            run_id = earlier.info.run_id
            client.update_run(run_id, status="RUNNING")
            self._sent_up_to = {m.key: m.step for m in earlier.data.to_proto().metrics}
            params = _changed_params(earlier.data.params, params, attempt)
        self._client, self.run_id = client, run_id
        client.set_tag(run_id, ATTEMPT_TAG, str(attempt))
        batch = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(batch), _BATCH):
            client.log_batch(run_id, params=batch[start : start + _BATCH])
        try:
            reconcile_runs(client, skip=run_id)
        except Exception as exc:  # never a reason to stop mirroring this run
            say_on_stderr(f"could not reconcile the MLflow runs of {self.tracking_uri} ({exc})")

    def tracker_link(self) -> tuple[str, Mapping[str, str]] | None:
        """Where this run is mirrored, once it started (kept in ``run.json``)."""
        if self.run_id is None:
            return None
        return TRACKER, {"tracking_uri": self.tracking_uri, "run_id": self.run_id}

    def metrics(self, values: Mapping[str, float], step: int | None) -> None:
        if step is not None and self._sent_up_to:
            # A resumed attempt redoing steps an earlier one sent: MLflow cannot replace
            # a point, so the step keeps the earlier value rather than get a second one.
            values = {k: v for k, v in values.items() if step > self._sent_up_to.get(k, -1)}
        self._log(values, step or 0)

    def summary(self, values: Mapping[str, float]) -> None:
        self._log(values, 0)

    def transition(self, step: TransitionRecord) -> None:
        started = self._started
        if started is not None and step.ok and step.dest is LifecycleState.READY:
            self._started = None
            self._open(started)
        # A step of the machine is rare and often the last sign of life: send the tail.
        self.flush()

    def _log(self, values: Mapping[str, float], step: int) -> None:
        if self._client is None or not values:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            self._pending.extend(Metric(name, float(v), now, step) for name, v in values.items())
            self._pending_calls += 1
            due = self._pending_calls >= self._flush_every or (
                time.monotonic() - self._flushed_at >= self._flush_every_s
            )
        if due:
            self.flush()

    def flush(self) -> None:
        """Send the metrics buffered since the last flush (one ``log_batch`` per
        :data:`_MAX_METRICS_PER_BATCH`)."""
        with self._lock:
            pending, self._pending, self._pending_calls = self._pending, [], 0
            self._flushed_at = time.monotonic()
        if self._client is None or not pending:
            return
        for start in range(0, len(pending), _MAX_METRICS_PER_BATCH):
            self._client.log_batch(
                self.run_id, metrics=pending[start : start + _MAX_METRICS_PER_BATCH]
            )

    def run_ended(self, record: RunRecord) -> None:
        client, run_id = self._client, self.run_id
        if client is None or run_id is None:
            return
        try:
            self.flush()
            for tag, value in _git_tags(record.root).items():
                client.set_tag(run_id, tag, value)
            for folder in (REPORTS_DIR, LOGS_DIR):
                if (record.root / folder).is_dir():
                    client.log_artifacts(run_id, str(record.root / folder), folder)
        finally:
            client.set_terminated(run_id, MLFLOW_STATUS.get(record.status, "FAILED"))
