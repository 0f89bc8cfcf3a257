"""Worker scheduling: N processes share one study and run exactly ``n_trials`` trials together.

* The budget: a process asks for a trial only while holding the study's storage-wide lock
  (storage.budget_lock) and only while the study holds fewer than ``n_trials`` counted trials (every
  trial except the reclaimed ones), or an enqueued one is waiting.
* Liveness: a running trial's worker writes the time into the trial's ``heartbeat`` user attribute
  every ``heartbeat_interval`` s (Optuna's own heartbeat is tied to ``study.optimize``; this one is
  written through the public storage API and works for journal files and databases alike).
* Reclaim: a trial whose worker is gone (no heartbeat for ``stale_after`` s, or named by
  ``--reclaim``) or was interrupted is failed, marked ``ttfs_excluded`` (no longer counted), its MLflow
  run closed, and its params enqueued again with ``retry_of``: no point of the search is lost.
* A process with nothing to run while trials run elsewhere says which trial it waits for, until when,
  and the command that reclaims it at once.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ..params import TuneParams
from ..tracking import Tracker
from .objective import EXCLUDED, RUN_ID, WORKER, Context, close_trial_run, run_trial, worker_name
from .space import BASELINE
from .storage import StorageSpec, budget_lock

HEARTBEAT = "heartbeat"  # trial user attribute: time.time() of the worker's last sign of life
RETRY_OF = "retry_of"  # user attribute of a retry: the number of the trial it replaces
PROGRESS_EVERY = 60.0  # s between two "waiting for trial ..." lines
MISSED_BEATS = 3  # --reclaim-stale: heartbeats missed before a trial counts as orphaned


@dataclass
class Shared:
    """The study as every process of a session sees it: Optuna's handle, the storage, the lock."""

    study: optuna.Study
    storage: BaseStorage
    spec: StorageSpec
    tracker: Tracker
    reclaim_hint: str  # the command that reclaims a trial, without its number: "... --reclaim"

    def lock(self):
        return budget_lock(self.spec, self.study.study_name)

    def trial_id(self, number: int) -> int:
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)


def counted(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count against the budget: all but the reclaimed ones."""
    return [t for t in trials if not (t.state == TrialState.FAIL and t.user_attrs.get(EXCLUDED))]


def last_beat(t: FrozenTrial) -> float:
    beat = t.user_attrs.get(HEARTBEAT)
    return float(beat) if beat is not None else t.datetime_start.timestamp()


def running(shared: Shared) -> list[FrozenTrial]:
    return shared.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def reclaim_locked(shared: Shared, number: int, kind: str, reason: str, mlflow_status: str = "FAILED") -> bool:
    """Fail running trial ``number``, close its MLflow run, enqueue its params again. Hold ``shared.lock()``.

    Returns False when the trial is not running (finished, or reclaimed by another process).
    """
    trial_id = shared.trial_id(number)
    t = shared.storage.get_trial(trial_id)
    if t.state != TrialState.RUNNING:
        return False
    shared.storage.set_trial_user_attr(trial_id, EXCLUDED, kind)
    shared.storage.set_trial_user_attr(trial_id, "fail_reason", reason)
    shared.storage.set_trial_state_values(trial_id, TrialState.FAIL)
    retry = {RETRY_OF: number, **({BASELINE: True} if t.user_attrs.get(BASELINE) else {})}
    shared.study.enqueue_trial(dict(t.params), user_attrs=retry)
    close_trial_run(shared.tracker, t.user_attrs.get(RUN_ID), mlflow_status, "FAIL", reason)
    print(f"trial {number} failed ({reason}); its MLflow run is {mlflow_status}, its params are enqueued again",
          file=sys.stderr, flush=True)
    return True


def next_trial(shared: Shared, n_trials: int, stale_after: float) -> optuna.Trial | None:
    """A new (or enqueued) trial if the shared budget allows one, else None. Reclaims stale trials first."""
    with shared.lock():
        now = time.time()
        for t in running(shared):
            if now - last_beat(t) > stale_after:
                reclaim_locked(shared, t.number, "stale", f"no heartbeat from {t.user_attrs.get(WORKER, '?')} "
                               f"for {now - last_beat(t):.0f} s (stale_after {stale_after:g} s)")
        trials = counted(shared.study.get_trials(deepcopy=False))
        if len(trials) >= n_trials and not any(t.state == TrialState.WAITING for t in trials):
            return None
        trial = shared.study.ask()
        trial.set_user_attr(HEARTBEAT, time.time())
        trial.set_user_attr(WORKER, worker_name())
        return trial


class Heartbeat:
    """While the block runs, write time.time() into the trial's ``heartbeat`` every ``interval`` s."""

    def __init__(self, trial: optuna.Trial, interval: float):
        self.trial, self.interval, self.stop = trial, interval, threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial.number}", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.trial.set_user_attr(HEARTBEAT, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                print(f"warning: trial {self.trial.number} was reclaimed by another process; it runs on, its result "
                      f"will be dropped", file=sys.stderr)
                return
            except Exception as e:  # a storage hiccup: the next beat tries again
                print(f"warning: heartbeat of trial {self.trial.number} failed: {e}", file=sys.stderr)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def run_guarded(shared: Shared, ctx: Context, trial: optuna.Trial) -> TrialState:
    """run_trial with a heartbeat; on Ctrl-C/SIGTERM the trial is failed, its run KILLED, its params given back."""
    try:
        with Heartbeat(trial, ctx.tp.heartbeat_interval):
            return run_trial(ctx, trial)
    except KeyboardInterrupt as e:
        with shared.lock():
            reclaim_locked(shared, trial.number, "interrupted", f"worker {worker_name()} interrupted by "
                           f"{e or 'SIGINT'}", mlflow_status="KILLED")
        raise


def _clock(ts: float) -> str:
    same_day = time.strftime("%Y-%m-%d", time.localtime(ts)) == time.strftime("%Y-%m-%d")
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", time.localtime(ts))


def describe_wait(shared: Shared, t: FrozenTrial, until: float) -> str:
    host, _, pid = str(t.user_attrs.get(WORKER, "?:?")).rpartition(":")
    return (f"waiting for trial {t.number} (worker pid {pid} on host {host}, last heartbeat "
            f"{_clock(last_beat(t))}) until {_clock(until)}; reclaim it now with: {shared.reclaim_hint} {t.number}")


def work(shared: Shared, tp: TuneParams, ctx: Context | None, wait: bool) -> int:
    """Run trials while the budget allows (none when ``ctx`` is None); then, if ``wait``, wait for the
    trials running elsewhere, saying which and until when. Returns how many trials this process ran.

    A process that runs trials reclaims a stale trial (no heartbeat for ``stale_after`` s) and runs
    its retry; one that runs none (export only) stops waiting for it. ``wait_timeout`` caps the wait.
    """
    done, waited_since, next_line = 0, time.monotonic(), 0.0
    while True:
        trial = next_trial(shared, budget(shared, tp.n_trials), tp.stale_after) if ctx is not None else None
        if trial is not None:
            run_guarded(shared, ctx, trial)
            done, waited_since, next_line = done + 1, time.monotonic(), 0.0
            continue
        if not wait:
            return done
        now = time.time()
        others = [t for t in running(shared) if ctx is not None or now - last_beat(t) <= tp.stale_after]
        if not others:
            for t in running(shared):
                print(f"warning: trial {t.number} has had no heartbeat since {_clock(last_beat(t))}: not waiting "
                      f"for it (reclaim it with: {shared.reclaim_hint} {t.number})", file=sys.stderr)
            return done
        give_up = now + tp.wait_timeout - (time.monotonic() - waited_since)
        if now >= give_up:
            print(f"warning: {len(others)} trial(s) still running after {tp.wait_timeout:g} s; going on without "
                  "them", file=sys.stderr)
            return done
        if now >= next_line:
            for t in others:
                until = min(last_beat(t) + tp.stale_after, give_up)
                print(f"tune: {describe_wait(shared, t, until)}", file=sys.stderr, flush=True)
            next_line = now + PROGRESS_EVERY
        time.sleep(min(5.0, tp.heartbeat_interval))


def budget(shared: Shared, default: int) -> int:
    """The budget the stage's process recorded in the study (workers follow it), else ``default``."""
    return int(shared.study.user_attrs.get("n_trials", default))
