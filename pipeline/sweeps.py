"""Hardware-constraint sweeps (SPEC 5): accuracy of a trained SNN against jitter, time steps, weight bits, latency.

For every grid value of every constraint kind the sweep takes a fresh copy of the (fine-tuned, exact)
SNN, applies the constraint, measures it on the test set ("before": no fine-tuning), fine-tunes it under
the constraint for ``finetune_epochs`` epochs with fixed windows and measures it again ("finetuned").

How each constraint is applied (``ttfs.constraints``):

* ``jitter`` sigma (tau_c): Gaussian noise on every spike emitted by a hidden layer (the input spikes
  too with ``jitter_inputs``), model windows, saturation. Evaluated with ``jitter_seeds`` noise seeds
  (``JITTER_EVAL_SEED + i``, the same seeds before and after fine-tuning: paired), reported as mean and
  sample std; fine-tuning draws fresh noise every step from a generator seeded with the experiment
  seed. Sigma is also reported relative to each jittered window, sigma / Delta^(n): the same sigma is
  harmless in a wide window and destructive in a tight one.
* ``time_steps`` K: hidden windows first tightened to the ``window_quantile`` of each layer's positive
  activations on ``quantile_samples`` training inputs (a loose window wastes the K steps, SPEC 5); then
  spike times snap to K steps per window (nearest step; saturation first, so never before t_min). With
  ``time_levels: bits`` a grid value is a bit-width b and K = 2^b - 1 (the authors' b-bit time
  quantisation: 2^b - 1 spike times plus silence).
* ``weight_bits`` b: b-bit symmetric per-layer fake quantisation (range = ``weight_percentile`` of |W|),
  thresholds in full precision, straight-through gradient; model windows with saturation.
* ``latency_factor`` f: every window (the input window too, exactly) divided by f, starting from the
  tightened windows (``latency_base: tight``) or from the model's own windows (``model``; after the
  adaptive rule those are kappa times looser than the data, so a factor there is partly free);
  activations above the new width saturate.

Latency reduction is reported against the windows of the converted SNN, Delta^(n) = (1 + zeta) X_n
(``latency_reduction_vs_conversion``, the honest baseline: the windows a conversion needs), and, for
comparison, against the fine-tuned SNN's own windows, which the adaptive rule has inflated
(``latency_reduction_vs_finetuned``; it overstates the gain).

Every constrained network saturates spikes into their windows, so hardware constraints never produce
causality violations; windows stay fixed during fine-tuning (``adapt_windows=False``, SPEC 2.8).

Interrupted sweeps resume: the results of finished settings are kept in one state file in
checkpoints/<experiment>/ (replaced atomically after each setting), and a setting interrupted during
fine-tuning resumes from its last finished epoch (:func:`pipeline.training.fit`). Both are keyed by a
hash of the params, the model files, the data and the source of the code that computes the results.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ttfs.constraints import constrain_spike_times, quantise_weights, reduce_latency, tighten_windows
from ttfs.network import SNN
from ttfs.train import TensorBatches

from . import checkpoint
from . import params as P
from .artifacts import Paths, write_csv
from .params import SweepParams
from .results import SweepResult
from .tracking import run_params
from .training import fit

KINDS = ("jitter", "time_steps", "weight_bits", "latency_factor")
#: CSV column holding the grid value (the x axis of `dvc plots`).
X_COLUMN = {"jitter": "sigma", "time_steps": "time_steps", "weight_bits": "weight_bits",
            "latency_factor": "latency_factor"}
#: plots/<experiment>/<name>.csv and .png per kind.
PLOT_NAME = {"jitter": "sweep_jitter", "time_steps": "sweep_time_steps", "weight_bits": "sweep_weight_bits",
             "latency_factor": "sweep_latency"}
JITTER_EVAL_SEED = 10_000


# -- measuring ---------------------------------------------------------------------------------------


def fmt(value: float) -> str:
    """Grid value as a key: 16, 0.05, 2.5."""
    return f"{value:g}"


def setting_key(kind: str, value: float) -> str:
    return f"{kind}={fmt(value)}"


@torch.no_grad()
def measure(snn: SNN, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Accuracy, mean cross-entropy, spikes per hidden neuron, causality violations and latency, one pass."""
    was_training = snn.training
    snn.eval()
    correct = seen = spikes = violations = 0
    loss = 0.0
    neurons = 0
    try:
        for z, y in batches:
            record = snn.run(z)
            correct += int((record.logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(record.logits, y, reduction="sum"))
            seen += len(y)
            if record.times:
                spikes += int(record.spikes_per_layer().sum())
                violations += int(record.causality_violations().sum())
                neurons = int(record.neurons_per_layer().sum())
    finally:
        snn.train(was_training)
    if not seen:
        raise ValueError("no samples to measure")
    return {"accuracy": correct / seen, "loss": loss / seen,
            "spikes_per_neuron": spikes / (seen * neurons) if neurons else 0.0,
            "causality_violations": violations, "latency": float(snn.latency())}


def _mean_std(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Mean of every metric over jitter seeds; sample std of the accuracies and spikes; per-seed accuracy."""
    out: dict[str, Any] = {}
    for k in runs[0]:
        values = [float(r[k]) for r in runs]
        out[k] = statistics.fmean(values)
        if k in ("accuracy", "spikes_per_neuron", "train_accuracy"):
            out[f"{k}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    out["accuracy_per_seed"] = [float(r["accuracy"]) for r in runs]
    return out


@dataclass
class SweepData:
    """Raw inputs and labels (as the ReLU network takes them): training (fine-tuning), validation
    (window calibration, fine-tuning curves) and test (the reported accuracies)."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor


class _NullRun:
    """Stands in for a StageRun when tracking is off."""

    run_id = None
    resumed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def log_metrics(self, values, step: int = 0) -> None:
        pass

    def set_tags(self, tags) -> None:
        pass


class NullRecorder:
    """No MLflow: child runs do nothing."""

    parent_run_id = None
    parent_resumed = False

    def child(self, kind: str, value: float, lr: float, resume: str | None = None):
        return _NullRun()

    def finish_child(self, run, kind: str, value: float, result: dict, seconds: float | None) -> None:
        pass

    def replay(self, kind: str, value: float, result: dict, run_id: str | None) -> None:
        pass


class MlflowRecorder:
    """One nested MLflow run per setting under the sweep's parent run, tagged with the reference ReLU run."""

    def __init__(self, tracker, parent, reference, stage: str, params: dict, tags: dict[str, str]):
        self.tracker, self.parent, self.reference = tracker, parent, reference
        self.stage, self.params, self.tags = stage, params, tags

    @property
    def parent_run_id(self) -> str:
        return self.parent.run_id

    @property
    def parent_resumed(self) -> bool:
        return self.parent.resumed

    def child(self, kind: str, value: float, lr: float, resume: str | None = None):
        """The setting's nested run; ``lr``: the rate it fine-tunes at (SweepParams.finetune_params)."""
        key = setting_key(kind, value)
        tags = self.tags | {
            "mlflow.parentRunId": self.parent.run_id, "mlflow.runName": key,
            "mlflow.source.name": "stages/sweep.py", "reference_run_id": self.reference.run_id,
            "constraint": kind, "constraint_value": fmt(value),
            "params_hash": P.params_hash(self.params, kind, value),
        }
        params = run_params(self.params, "sweep", {"lr": lr}) | {"constraint": {"kind": kind, "value": value}}
        return self.tracker.run(self.stage, params, tags, resume=resume)

    def finish_child(self, run, kind: str, value: float, result: dict, seconds: float | None) -> None:
        run.log_metrics(setting_metrics(result) | ({"seconds": seconds} if seconds is not None else {}),
                        step=result["finetune_epochs"])
        final = result["finetuned"] or result["before"]
        run.set_tags({"reference_run_id": self.reference.run_id})
        run.log_metrics(self.reference.deltas({"test_accuracy": final["accuracy"]}), step=result["finetune_epochs"])

    def replay(self, kind: str, value: float, result: dict, run_id: str | None) -> None:
        """A setting finished before an interruption: its run exists if the parent was resumed, else re-log it."""
        if self.parent.resumed and run_id:
            return
        with self.child(kind, value, result["finetune_lr"]) as run:
            run.set_tags({"restored_from": "sweep state checkpoint"})
            self.finish_child(run, kind, value, result, None)


def setting_metrics(result: dict) -> dict:
    """The numbers of one setting as MLflow metrics (before.*, finetuned.*, delta_snn.*)."""
    out: dict[str, Any] = {"value": result["value"], "latency": result["latency"],
                           "latency_reduction_vs_conversion": result["latency_reduction_vs_conversion"],
                           "latency_reduction_vs_finetuned": result["latency_reduction_vs_finetuned"],
                           "before": result["before"]}
    if "sigma_relative_per_layer" in result:
        out["sigma_relative"] = result["sigma_relative_per_layer"]
    if result["finetuned"] is not None:
        out["finetuned"] = result["finetuned"]
        out["running_train_accuracy"] = result["finetune_train_accuracy"]  # the MLflow name (training.RUNNING)
    out["delta_snn"] = {k: v for k, v in result["delta_snn"].items() if v is not None}
    return out


# -- the sweep ---------------------------------------------------------------------------------------


def _batches(x: Tensor, y: Tensor, batch_size: int, shuffle: bool, seed: int, device, dtype) -> TensorBatches:
    return TensorBatches(x, y, batch_size, shuffle=shuffle, seed=seed, device=device, dtype=dtype)


def conversion_reference(windows: Sequence[float] | Tensor) -> dict[str, Any]:
    """The latency baseline: the converted SNN's windows Delta^(0..N-1) and their sum (its latency)."""
    widths = [float(w) for w in (windows.tolist() if isinstance(windows, Tensor) else windows)]
    if not widths or min(widths) <= 0:
        raise ValueError(f"conversion windows must be positive widths, got {widths}")
    return {"windows": widths, "latency": math.fsum(widths)}


def relative_sigma(sigma: float, windows: Sequence[float], jitter_inputs: bool) -> dict[str, float]:
    """sigma / Delta^(n) for every jittered window: ``input`` (only with ``jitter_inputs``), ``layer1``..."""
    names = ["input", *(f"layer{n}" for n in range(1, len(windows)))]
    return {name: sigma / width for name, width in zip(names, windows, strict=True)
            if name != "input" or jitter_inputs}


class Sweep:
    """Runs every setting of ``sp`` on copies of ``snn``; see :func:`run_sweep`."""

    def __init__(self, snn: SNN, data: SweepData, sp: SweepParams, *, conversion_windows: Sequence[float] | Tensor,
                 seed: int, device, dtype: torch.dtype, state_path: Path, recorder=None, desc: str = "sweep",
                 log: Callable[[str], None] | None = None):
        self.conversion = conversion_reference(conversion_windows)
        if len(self.conversion["windows"]) != len(snn.deltas):
            raise ValueError(f"{len(self.conversion['windows'])} conversion windows for an SNN with "
                             f"{len(snn.deltas)} windows: not the same network")
        self.base = copy.deepcopy(snn).to(device, dtype)
        self.base.spike_constraints = None
        quantise_weights(self.base, None)
        self.data, self.sp, self.seed = data, sp, seed
        self.device, self.dtype = torch.device(device), dtype
        self.state_path = Path(state_path)
        self.recorder = recorder or NullRecorder()
        self.desc = desc
        self.log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
        self.val = _batches(data.val_x, data.val_y, sp.eval_batch_size, False, seed, device, dtype)
        self.test = _batches(data.test_x, data.test_y, sp.eval_batch_size, False, seed, device, dtype)
        self.train_eval = (_batches(data.train_x, data.train_y, sp.eval_batch_size, False, seed, device, dtype)
                           if sp.train_metrics else None)
        self._tight: Tensor | None = None

    # constraints -----------------------------------------------------------------------------------

    def tight_deltas(self) -> Tensor:
        """Hidden window widths at the ``window_quantile`` of the validation activations (computed once)."""
        if self._tight is None:
            snn = copy.deepcopy(self.base)
            x = self.data.val_x if self.sp.quantile_samples is None else self.data.val_x[:self.sp.quantile_samples]
            tighten_windows(snn, x, self.sp.window_quantile)
            self._tight = snn.deltas[1:].detach().clone()
        return self._tight

    def _tightened(self) -> SNN:
        snn = copy.deepcopy(self.base)
        with torch.no_grad():
            snn.deltas[1:] = self.tight_deltas()
        return snn

    def constrained(self, kind: str, value: float) -> SNN:
        """A fresh copy of the SNN under one constraint (jitter: the training noise stream)."""
        if kind == "jitter":
            snn = copy.deepcopy(self.base)
            constrain_spike_times(snn, jitter=value, seed=self.seed, jitter_inputs=self.sp.jitter_inputs)
        elif kind == "time_steps":
            snn = self._tightened()
            constrain_spike_times(snn, time_steps=self.sp.time_steps_for(int(value)))
        elif kind == "weight_bits":
            snn = copy.deepcopy(self.base)
            constrain_spike_times(snn)
            quantise_weights(snn, int(value), self.sp.weight_percentile)
        elif kind == "latency_factor":
            snn = self._tightened() if self.sp.latency_base == "tight" else copy.deepcopy(self.base)
            constrain_spike_times(snn)
            reduce_latency(snn, float(value))
        else:
            raise ValueError(f"unknown constraint kind {kind!r}; one of {', '.join(KINDS)}")
        return snn

    # measuring -------------------------------------------------------------------------------------

    def _measure_once(self, snn: SNN) -> dict[str, float]:
        out = measure(snn, self.test)
        if self.train_eval is not None:
            out["train_accuracy"] = measure(snn, self.train_eval)["accuracy"]
        return out

    def evaluate(self, snn: SNN, kind: str, value: float) -> dict[str, Any]:
        """Test metrics under the constraint; jitter: mean and std over the evaluation seeds."""
        if kind != "jitter" or value == 0:
            out = self._measure_once(snn)
            if kind == "jitter":  # sigma = 0 is deterministic: every seed gives the same numbers
                out = _mean_std([out] * self.sp.jitter_seeds)
            return out
        training = snn.spike_constraints
        runs = []
        try:
            for i in range(self.sp.jitter_seeds):
                constrain_spike_times(snn, jitter=value, seed=JITTER_EVAL_SEED + i,
                                      jitter_inputs=self.sp.jitter_inputs)
                runs.append(self._measure_once(snn))
        finally:
            snn.spike_constraints = training
        return _mean_std(runs)

    def references(self) -> tuple[dict, dict]:
        """The exact SNN, and the SNN with tightened windows (saturation only), on the test set."""
        snn = self._measure_once(self.base)
        tight_snn = self._tightened()
        constrain_spike_times(tight_snn)
        tight = self._measure_once(tight_snn) | {
            "quantile": self.sp.window_quantile,
            "samples": min(len(self.data.val_x), self.sp.quantile_samples or len(self.data.val_x)),
            "windows": [float(d) for d in tight_snn.deltas.tolist()],
        }
        return snn, tight

    # one setting -----------------------------------------------------------------------------------

    def setting_checkpoint(self, kind: str, value: float) -> Path:
        return self.state_path.with_name(f"{self.state_path.stem}-{kind}-{fmt(value)}.pt")

    def run_setting(self, kind: str, value: float, reference: dict) -> tuple[dict, str | None]:
        """(result, MLflow run id) of one setting: measure, fine-tune under the constraint, measure again."""
        started = time.monotonic()
        snn = self.constrained(kind, value)
        before = self.evaluate(snn, kind, value)
        ckpt = self.setting_checkpoint(kind, value)
        state = checkpoint.load(ckpt) if self.sp.finetune_epochs else None
        finetune = self.sp.finetune_params(kind)
        with self.recorder.child(kind, value, finetune.lr, resume=state and state.get("run_id")) as run:
            finetuned, history = None, []
            if self.sp.finetune_epochs:
                torch.manual_seed(self.seed)
                train = _batches(self.data.train_x, self.data.train_y, self.sp.batch_size, True, self.seed,
                                 self.device, self.dtype)
                history = fit(snn, train, self.val, finetune, ckpt, state, run,
                              f"{self.desc} {setting_key(kind, value)}", seed=self.seed)
                finetuned = self.evaluate(snn, kind, value)
            final = finetuned or before
            windows = [float(d) for d in snn.deltas.tolist()]
            result = {
                "kind": kind, "value": value, "finetune_epochs": len(history), "finetune_lr": finetune.lr,
                "before": before, "finetuned": finetuned,
                "finetune_train_accuracy": history[-1]["train_accuracy"] if history else None,
                "latency": float(snn.latency()),
                "latency_reduction_vs_conversion": self.conversion["latency"] / float(snn.latency()),
                "latency_reduction_vs_finetuned": reference["latency"] / float(snn.latency()),
                "windows": windows,
                "delta_snn": {
                    "before_accuracy": before["accuracy"] - reference["accuracy"],
                    "finetuned_accuracy": (finetuned["accuracy"] - reference["accuracy"]) if finetuned else None,
                },
                "causality_violations": final["causality_violations"],
            } | self.setting_details(kind, value, windows)
            self.recorder.finish_child(run, kind, value, result, time.monotonic() - started)
        checkpoint.remove(ckpt)
        return result, run.run_id

    def setting_details(self, kind: str, value: float, windows: list[float]) -> dict[str, Any]:
        """What one kind adds: sigma per window width (jitter), the steps per window it used (time_steps)."""
        if kind == "jitter":
            return {"sigma_relative_per_layer": relative_sigma(value, windows, self.sp.jitter_inputs)}
        if kind == "time_steps":
            return {"time_steps_per_window": self.sp.time_steps_for(int(value))}
        return {}

    # the whole grid --------------------------------------------------------------------------------

    def settings(self) -> list[tuple[str, float]]:
        return [(kind, value) for kind in KINDS for value in self.sp.grid(kind)]

    def run(self, state: dict | None = None) -> dict:
        state = dict(state or {})
        done: dict[str, dict] = dict(state.get("results", {}))
        run_ids: dict[str, str | None] = dict(state.get("run_ids", {}))
        if "references" in state:
            snn_ref, tight_ref = state["references"]
        else:
            snn_ref, tight_ref = self.references()
        settings = self.settings()
        if done:
            self.log(f"{self.desc}: resuming, {sum(setting_key(*s) in done for s in settings)} of "
                     f"{len(settings)} settings already finished ({self.state_path})")
        progress = tqdm(settings, desc=self.desc, unit="setting", file=sys.stderr, mininterval=1.0)
        for kind, value in progress:
            key = setting_key(kind, value)
            progress.set_postfix_str(key)
            if key in done:
                self.recorder.replay(kind, value, done[key], run_ids.get(key))
                continue
            result, run_id = self.run_setting(kind, value, snn_ref)
            done[key], run_ids[key] = result, run_id
            after = result["finetuned"]
            self.log(f"{self.desc} {key}: accuracy {result['before']['accuracy']:.4f} without fine-tuning"
                     + (f", {after['accuracy']:.4f} after {result['finetune_epochs']} epoch(s)" if after else "")
                     + f" (exact SNN {snn_ref['accuracy']:.4f})")
            checkpoint.save(self.state_path, {"run_id": self.recorder.parent_run_id, "results": done,
                                              "run_ids": run_ids, "references": (snn_ref, tight_ref)})
        progress.close()
        return assemble(self.sp, snn_ref, tight_ref, [done[setting_key(*s)] for s in settings], self.conversion)


def run_sweep(snn: SNN, data: SweepData, sp: SweepParams, *, conversion_windows: Sequence[float] | Tensor,
              seed: int, device="cpu", dtype: torch.dtype = torch.float32, state_path: Path,
              state: dict | None = None, recorder=None, desc: str = "sweep") -> dict:
    """Sweep every constraint of ``sp`` over its grid on copies of ``snn``; returns the sweep.json content.

    ``conversion_windows``: Delta^(0..N-1) of the converted SNN that ``snn`` was fine-tuned from, the
    baseline of ``latency_reduction_vs_conversion``. ``state`` is a loaded ``state_path`` checkpoint
    (finished settings are not redone); the state file is rewritten after every setting, and
    per-setting fine-tuning checkpoints live next to it. ``recorder``: :class:`MlflowRecorder` (nested
    runs) or None.
    """
    return Sweep(snn, data, sp, conversion_windows=conversion_windows, seed=seed, device=device, dtype=dtype,
                 state_path=state_path, recorder=recorder, desc=desc).run(state)


def _best(kind: str, rows: list[dict], target: float) -> float | None:
    """The most aggressive grid value whose fine-tuned (else unconstrained-eval) accuracy is >= target."""
    ok = [r["value"] for r in rows if (r["finetuned"] or r["before"])["accuracy"] >= target]
    if not ok:
        return None
    return min(ok) if kind in ("time_steps", "weight_bits") else max(ok)


def assemble(sp: SweepParams, snn_ref: dict, tight_ref: dict, results: list[dict], conversion: dict) -> dict:
    """sweep.json: references (``conversion``: the converted SNN's windows, the latency baseline), every
    setting by kind and value, and the summary of what stays within tolerance."""
    by_kind: dict[str, dict[str, dict]] = {kind: {} for kind in KINDS}
    for r in results:
        by_kind[r["kind"]][fmt(r["value"])] = {k: v for k, v in r.items() if k != "kind"}
    target = snn_ref["accuracy"] - sp.tolerance
    return {
        "snn": snn_ref,
        "tight_windows": tight_ref,
        "conversion": conversion,
        "time_levels": sp.time_levels,
        "jitter_inputs": sp.jitter_inputs,
        "finetune_epochs": sp.finetune_epochs,
        "jitter_seeds": sp.jitter_seeds,
        "tolerance": sp.tolerance,
        "within_tolerance": {kind: _best(kind, [r for r in results if r["kind"] == kind], target) for kind in KINDS},
        "settings": by_kind,
    }


# -- outputs -----------------------------------------------------------------------------------------


def rows_for(result: dict, kind: str) -> list[dict]:
    """One CSV row per grid value, sorted by value."""
    x = X_COLUMN[kind]
    rows = []
    for r in sorted(result["settings"][kind].values(), key=lambda r: r["value"]):
        after = r["finetuned"] or {}
        row = {x: r["value"], "accuracy_before": r["before"]["accuracy"], "accuracy_finetuned": after.get("accuracy"),
               "spikes_per_neuron_before": r["before"]["spikes_per_neuron"],
               "spikes_per_neuron_finetuned": after.get("spikes_per_neuron"), "latency": r["latency"],
               "latency_reduction_vs_conversion": r["latency_reduction_vs_conversion"],
               "snn_accuracy": result["snn"]["accuracy"]}
        if kind == "jitter":
            relative = r["sigma_relative_per_layer"].values()
            row |= {"accuracy_before_std": r["before"]["accuracy_std"],
                    "accuracy_finetuned_std": after.get("accuracy_std"),
                    "sigma_relative_min": min(relative, default=None),
                    "sigma_relative_max": max(relative, default=None)}
        if kind == "time_steps":
            row["time_steps_per_window"] = r["time_steps_per_window"]
        rows.append(row)
    return rows


def csv_columns(kind: str) -> list[str]:
    cols = [X_COLUMN[kind], "accuracy_before", "accuracy_finetuned"]
    if kind == "jitter":
        cols += ["accuracy_before_std", "accuracy_finetuned_std", "sigma_relative_min", "sigma_relative_max"]
    if kind == "time_steps":
        cols += ["time_steps_per_window"]
    return cols + ["spikes_per_neuron_before", "spikes_per_neuron_finetuned", "latency",
                   "latency_reduction_vs_conversion", "snn_accuracy"]


_XLABEL = {"jitter": "spike-time jitter sigma (tau_c)", "time_steps": "time steps per window K",
           "weight_bits": "weight bits b", "latency_factor": "latency reduction factor"}


def xlabel(kind: str, result: dict) -> str:
    if kind == "time_steps" and result.get("time_levels") == "bits":
        return "time bits b (2^b - 1 steps per window)"
    return _XLABEL[kind]


def plot_kind(path: Path, kind: str, result: dict, title: str) -> None:
    """Accuracy against the grid value: without and with fine-tuning, the exact SNN as a reference line."""
    from . import plots

    plt = plots.plt
    rows = rows_for(result, kind)
    x = X_COLUMN[kind]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = [r[x] for r in rows]
    epochs = result["finetune_epochs"]
    lines = [("accuracy_before", "without fine-tuning", "o"),
             ("accuracy_finetuned", f"after {epochs} epoch{'s' if epochs != 1 else ''} of fine-tuning", "s")]
    for column, label, marker in lines:
        ys = [r[column] for r in rows]
        if not rows or any(y is None for y in ys):
            continue
        err = [r[f"{column}_std"] for r in rows] if kind == "jitter" else None
        ax.errorbar(xs, ys, yerr=err, marker=marker, capsize=3, label=label)
    ax.axhline(result["snn"]["accuracy"], color="black", ls="--", lw=1, label="exact SNN (unconstrained)")
    if kind in ("time_steps", "latency_factor"):
        ax.axhline(result["tight_windows"]["accuracy"], color="grey", ls=":", lw=1,
                   label=f"tight windows (q = {result['tight_windows']['quantile']:g})")
    if kind in ("time_steps", "latency_factor") and xs and min(xs) > 0:
        ax.set_xscale("log", base=2)
    if kind in ("time_steps", "weight_bits", "latency_factor") and xs:
        ax.set_xticks(xs, [fmt(v) for v in xs])
    if not rows:
        ax.text(0.5, 0.5, "no grid values", transform=ax.transAxes, ha="center", va="center")
    ax.set(xlabel=xlabel(kind, result), ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    plots.save_png(fig, path)


def output_files(paths: Paths) -> list[Path]:
    return [paths.metrics("sweep")] + [paths.plot(f"{PLOT_NAME[k]}.{ext}") for k in KINDS for ext in ("csv", "png")]


def write_outputs(paths: Paths, name: str, result: dict, params_hash: str, lineage: dict[str, str]) -> None:
    """metrics/<exp>/sweep.json (a SweepResult), plots/<exp>/sweep_*.csv (dvc plots) and sweep_*.png."""
    SweepResult.model_validate({**result, "params_hash": params_hash, "lineage": lineage}).write(
        paths.metrics("sweep"))
    for kind in KINDS:
        write_csv(paths.plot(f"{PLOT_NAME[kind]}.csv"), rows_for(result, kind), csv_columns(kind))
        plot_kind(paths.plot(f"{PLOT_NAME[kind]}.png"), kind, result, f"{name}: {kind.replace('_', ' ')}")


def summary_metrics(result: dict) -> dict:
    """Parent-run metrics: references, and before/finetuned accuracy per setting."""
    out: dict[str, Any] = {"snn": result["snn"], "tight_windows": {k: v for k, v in result["tight_windows"].items()
                                                                   if k not in ("windows", "samples")},
                           "conversion": {"latency": result["conversion"]["latency"]}}
    for kind, settings in result["settings"].items():
        for key, r in settings.items():
            out[f"{kind}.{key}.before.accuracy"] = r["before"]["accuracy"]
            if r["finetuned"] is not None:
                out[f"{kind}.{key}.finetuned.accuracy"] = r["finetuned"]["accuracy"]
    out["within_tolerance"] = {k: v for k, v in result["within_tolerance"].items() if v is not None}
    return out


__all__ = [
    "KINDS", "MlflowRecorder", "NullRecorder", "Sweep", "SweepData", "SweepParams", "assemble",
    "conversion_reference", "measure", "output_files", "plot_kind", "relative_sigma", "rows_for", "run_sweep",
    "setting_key", "summary_metrics", "write_outputs",
]
