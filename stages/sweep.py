"""Stage 6: hardware-constraint sweeps of the fine-tuned SNN (SPEC 5) -> metrics/<exp>/sweep.json, plots/<exp>/sweep_*.

Jitter sigma, time steps per window K, weight bit-width b and latency reduction factor, each over its
grid in ``experiments.<name>.sweep``: accuracy without fine-tuning and after fine-tuning under the
constraint, spikes per neuron and latency (see :mod:`pipeline.sweeps`). Latency reductions are measured
against the windows of the converted SNN (models/<exp>/snn_converted.pt, a dependency of the stage).
MLflow: one parent run ``sweep`` per experiment and one nested run per setting, all tagged with the
reference ReLU run.
"""

from __future__ import annotations

import sys

from pipeline import checkpoint
from pipeline import params as P
from pipeline.artifacts import load_snn
from pipeline.data import sha256_file
from pipeline.runner import Context, stage
from pipeline.sweeps import (
    KINDS,
    MlflowRecorder,
    NullRecorder,
    SweepData,
    output_files,
    run_sweep,
    summary_metrics,
    write_outputs,
)
from pipeline.tracking import project_root


@stage("sweep", distributed_ok=True)
def main(ctx: Context) -> dict:
    """Sweep the fine-tuned SNN of an experiment over every constraint grid; returns sweep.json."""
    exp, name = ctx.experiment, ctx.name
    sp = exp.params.sweep
    paths = exp.paths
    snn, lineage = load_snn(paths.snn)
    conversion_windows = load_snn(paths.converted)[0].deltas.tolist()  # the latency baseline
    stage_params = exp.stage_params("sweep")
    key = P.params_hash(stage_params, lineage, exp.data.meta["sha256"], sha256_file(paths.snn),
                        sha256_file(paths.converted))
    state_path = checkpoint.path_for(project_root(), name, "sweep", key)
    state = checkpoint.load(state_path)
    data = SweepData(*exp.data.split("train"), *exp.data.split("val"), *exp.data.split("test"))
    with exp.track("sweep", "sweep", resume=state and state.get("run_id")) as parent:
        if exp.main:
            reference = exp.reference(lineage["pretrain_params_hash"])
            parent.set_tags({"reference_run_id": reference.run_id})
            recorder = MlflowRecorder(exp.tracker, parent, reference, f"sweep@{name}", stage_params,
                                      exp.tags("sweep_setting"))
        else:  # torchrun: every rank runs every setting (fine-tuning data-parallel), rank 0 records
            recorder = NullRecorder()
        result = run_sweep(snn, data, sp, conversion_windows=conversion_windows, seed=exp.params.seed,
                           device=exp.device, dtype=exp.dtype, state_path=state_path, state=state,
                           recorder=recorder, desc=f"sweep {name}")
        if not exp.main:
            return result
        write_outputs(paths, name, result, exp.params_hash("sweep"), lineage)
        parent.log_metrics(summary_metrics(result))
        for path in output_files(paths):
            parent.log_artifact(path, "sweep")
    checkpoint.remove(state_path)
    ref, best = result["snn"], result["within_tolerance"]
    print(f"sweep {name}: exact SNN {ref['accuracy']:.4f}; within {sp.tolerance:g} after fine-tuning: "
          + ", ".join(f"{k} {best[k] if best[k] is not None else '-'}" for k in KINDS), file=sys.stderr)
    return result


if __name__ == "__main__":
    sys.exit(main())
