"""Stage 6: hardware-constraint sweeps of the fine-tuned SNN (SPEC 5) -> metrics/<exp>/sweep.json, plots/<exp>/sweep_*.

Jitter sigma, time steps per window K, weight bit-width b and latency reduction factor, each over its
grid in ``experiments.<name>.sweep``: accuracy without fine-tuning and after fine-tuning under the
constraint, spikes per neuron and latency (see :mod:`pipeline.sweeps`). MLflow: one parent run
``sweep`` per experiment and one nested run per setting, all tagged with the reference ReLU run.
"""

from __future__ import annotations

import sys

from pipeline import checkpoint
from pipeline import params as P
from pipeline.artifacts import load_snn
from pipeline.data import sha256_file
from pipeline.stage import Experiment, reference_run, run
from pipeline.sweeps import (
    KINDS,
    MlflowRecorder,
    SweepData,
    SweepParams,
    code_version,
    output_files,
    run_sweep,
    summary_metrics,
    write_outputs,
)
from pipeline.tracking import Tracker, project_root


def sweep(name: str, params: P.Params, sp: SweepParams) -> dict:
    """Sweep the fine-tuned SNN of experiment ``name`` over every constraint grid; returns sweep.json."""
    exp = Experiment.from_params(name, params)
    paths = exp.paths
    snn, lineage = load_snn(paths.snn)
    stage_params = P.as_dict({**exp.shared(), "sweep": sp})
    key = P.params_hash(stage_params, lineage, exp.data.meta["sha256"], sha256_file(paths.snn), code_version())
    state_path = checkpoint.path_for(project_root(), name, "sweep", key)
    state = checkpoint.load(state_path)
    data = SweepData(exp.data.train_x, exp.data.train_y, exp.data.test_x, exp.data.test_y)
    tracker = Tracker(name)
    tags = exp.tags("sweep") | {"params_hash": P.params_hash(stage_params)}
    with tracker.run(f"sweep@{name}", stage_params, tags, resume=state and state.get("run_id")) as parent:
        reference = reference_run(tracker, exp, lineage["pretrain_params_hash"])
        parent.set_tags({"reference_run_id": reference[0]})
        recorder = MlflowRecorder(tracker, parent, reference, f"sweep@{name}", stage_params,
                                  exp.tags("sweep_setting"))
        result = run_sweep(snn, data, sp, seed=exp.params.seed, device=exp.device, dtype=exp.dtype,
                           state_path=state_path, state=state, recorder=recorder, desc=f"sweep {name}")
        write_outputs(paths, name, result)
        parent.log_metrics(summary_metrics(result))
        for path in output_files(paths):
            parent.log_artifact(path, "sweep")
    checkpoint.remove(state_path)
    ref, best = result["snn"], result["within_tolerance"]
    print(f"sweep {name}: exact SNN {ref['accuracy']:.4f}; within {sp.tolerance:g} after fine-tuning: "
          + ", ".join(f"{k} {best[k] if best[k] is not None else '-'}" for k in KINDS), file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    return run("sweep", lambda name, params: sweep(name, params, params.experiment(name).sweep), argv)


if __name__ == "__main__":
    sys.exit(main())
