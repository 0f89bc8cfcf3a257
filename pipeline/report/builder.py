"""From typed params and results to what the templates show: one short function per part of the report.

Numbers are formatted in the templates (filters of :mod:`.fmt`); here are the decisions: which rows
the paper table has and what they average, whether a conversion is exact, which parts are missing and
which command produces them, which figures exist, and which MLflow run each stage's numbers came from.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..results import KINDS, ConvertResult, DtypeCheck, DynamicsResult, ParetoResult, Setting, Spectra, Trial
from . import paper
from .fmt import DASH, big, code, fixed, gen, mean_std, pct, sci
from .inputs import STAGES, ExperimentInputs, Inputs
from .runs import NO_RUN, RunKey, RunRef

SWEEP_PLOT = {"jitter": "sweep_jitter.png", "time_steps": "sweep_time_steps.png",
              "weight_bits": "sweep_weight_bits.png", "latency_factor": "sweep_latency.png"}
SWEEP_VALUE = {"jitter": "jitter σ (τ_c)", "time_steps": "time steps K", "weight_bits": "weight bits b",
               "latency_factor": "latency factor f"}
SWEEP_TITLE = {"jitter": "Spike-time jitter", "time_steps": "Time quantisation",
               "weight_bits": "Weight quantisation", "latency_factor": "Reduced latency"}
SWEEP_BEST = {"jitter": "largest σ", "time_steps": "smallest K", "weight_bits": "fewest bits",
              "latency_factor": "largest factor"}
#: the time kind when its grid values are bit-widths (sweep.time_levels: bits)
TIME_BITS_VALUE, TIME_BITS_BEST = "time bits b (2^b − 1 steps)", "fewest time bits"
EVALUATE_PLOTS = (("spikes_per_layer.png", "spikes per neuron per layer"),
                  ("spike_times.png", "spike-time distribution"), ("raster.png", "spike raster"))
DYNAMICS_PLOTS = ("training_curves.png", "cosine.png", "jacobian_spectra.png", "jacobian_depth.png")
DYNAMICS_LABEL = {"relu": "ReLU", "b1": "B1 (converted ReLU init)", "alpha1_smart": "α1, smart init",
                  "alpha1_standard": "α1, standard init", "relu_ulp": "ReLU, weights moved 1 ulp (control)"}
INIT_LABEL = {"b1": "B1", "alpha1_smart": "α1 smart", "alpha1_standard": "α1 standard"}
#: template filters: a network of the dynamics study, an initialisation of its spectra
LABELS = {"network": lambda n: DYNAMICS_LABEL[n] if n in DYNAMICS_LABEL else n,
          "init": lambda n: INIT_LABEL[n] if n in INIT_LABEL else n}


def produce(stage: str, experiment: str | None) -> str:
    """How to make a missing result: the DVC command and the stage module."""
    if experiment is None:
        return f"`dvc repro {stage}` (or `python -m stages.{stage}`)"
    return f"`dvc repro {stage}@{experiment}` (or `python -m stages.{stage} {experiment}`)"


def not_run(path: Path, stage: str, experiment: str | None) -> str:
    return f"Not run: `{path.as_posix()}` is missing. Produce it with {produce(stage, experiment)}."


# -- figures -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """The figures of one part: those present as (caption, link), and a note naming the missing ones."""

    present: list[tuple[str, str]]
    missing: str | None


def figures(root: Path, prefix: str, items: list[tuple[Path, str]], stage: str, experiment: str | None) -> Figures:
    present = [(caption, prefix + p.as_posix()) for p, caption in items if (root / p).is_file()]
    absent = [code(p.as_posix()) for p, _ in items if not (root / p).is_file()]
    note = (f"Plot{'s' if len(absent) > 1 else ''} missing: {', '.join(absent)} (written by "
            f"{produce(stage, experiment)}).") if absent else None
    return Figures(present, note)


# -- one experiment ------------------------------------------------------------------------------------


def describe(e: ExperimentInputs) -> str:
    p = e.params
    model = paper.model_label(p.model.name) + (f" ({p.model.name})" if paper.family(p.model.name) != p.model.name
                                               else "")
    options = ", ".join(f"{k}={v}" for k, v in sorted(p.model.options.items()))
    parts = [f"dataset {paper.dataset_label(p.dataset)}", f"model {model}" + (f" [{options}]" if options else ""),
             f"seed {p.seed}", p.dtype, f"fine-tuning: {p.finetune.mode}"]
    l1 = [f"{where} λ = {v:g}" for where, v in (("pretrain", p.pretrain.l1), ("finetune", p.finetune.l1)) if v > 0]
    parts.append("L1: " + (", ".join(l1) if l1 else "none"))
    if p.pretrain.nonpositive_bias or p.finetune.nonpositive_bias:
        parts.append("hidden biases kept <= 0 (docs/sparsity.md)")
    return "; ".join(parts) + "."


def verdict(conv: ConvertResult, rel_tolerance: float) -> tuple[str, list[str]]:
    """'exact' or 'NOT exact', and why not (SPEC 3.4: full agreement, logits within the tolerance)."""
    why = []
    if conv.agreement < 1.0:
        why.append(f"agreement {pct(conv.agreement, 4)} %")
    if conv.max_rel_logit_diff is None or conv.max_rel_logit_diff > rel_tolerance:
        why.append(f"relative logit difference {sci(conv.max_rel_logit_diff)} > {rel_tolerance:g}")
    if conv.causality_violations:
        why.append(f"{conv.causality_violations:,} causality violations")
    return ("exact" if not why else "NOT exact"), why


@dataclass(frozen=True)
class SweepKind:
    kind: str
    title: str
    value_label: str
    rows: list[Setting]
    note: str
    detail_label: str | None  # an extra column: σ relative to the windows (jitter), steps per window (time bits)
    details: list[str]


def _relative_range(values: dict[str, float] | None) -> str:
    """σ / Δ over the jittered windows: one value, or 'smallest–largest'."""
    if not values:
        return DASH
    low, high = min(values.values()), max(values.values())
    return f"{low:.3g}" if f"{low:.3g}" == f"{high:.3g}" else f"{low:.3g}–{high:.3g}"


def sweep_details(kind: str, rows: list[Setting], jitter_inputs: bool, bits: bool) -> tuple[str | None, list[str]]:
    """The extra column of a kind, its label and one cell per row: σ per window width for jitter, and the
    steps K = 2^b - 1 when the time grid is in bits (in steps the grid value is K already)."""
    if kind == "jitter":
        where = "input and hidden windows" if jitter_inputs else "hidden windows"
        return f"σ / Δ ({where})", [_relative_range(r.sigma_relative_per_layer) for r in rows]
    if kind == "time_steps" and bits:
        return "steps per window", [DASH if r.time_steps_per_window is None else str(r.time_steps_per_window)
                                    for r in rows]
    return None, []


def sweep_kinds(e: ExperimentInputs) -> list[SweepKind]:
    sw = e.sweep
    if sw is None:
        return []
    bits = sw.time_levels == "bits"
    out = []
    for kind in KINDS:
        line = paper.PAPER_CONSTRAINTS[kind][0].upper() + paper.PAPER_CONSTRAINTS[kind][1:]
        best = getattr(sw.within_tolerance, kind)
        best_label = TIME_BITS_BEST if bits and kind == "time_steps" else SWEEP_BEST[kind]
        ours = (f"Ours: {best_label} within {100 * sw.tolerance:.2f} pt of the exact SNN after fine-tuning: "
                f"{'none in the grid' if best is None else f'{best:.4g}'}. ")
        rows = sw.settings.rows(kind)
        label = TIME_BITS_VALUE if bits and kind == "time_steps" else SWEEP_VALUE[kind]
        out.append(SweepKind(kind, SWEEP_TITLE[kind], label, rows, ours + line + ".",
                             *sweep_details(kind, rows, sw.jitter_inputs, bits)))
    return out


def target_text(doc: ParetoResult) -> str:
    """The target check of pipeline.tuning in words."""
    t = doc.target
    parts = []
    for split, label in (("val", "validation"), ("test", "test")):
        s = getattr(t, split)
        if s is not None:
            pick = s.sparsest_within_drop
            parts.append(f"{label}: trial {pick.trial} (λ = {sci(pick.l1, 2)}) reaches {pct(pick.accuracy)} % at "
                         f"{fixed(pick.spikes_per_neuron)} spikes/neuron (best {pct(s.best_accuracy)} %) — target "
                         f"**{'met' if s.met else 'not met'}**")
    if not parts:
        return "Target check: no complete trials."
    return (f"Target check: the sparsest front trial within {100 * t.accuracy_drop:g} pt of the best accuracy, "
            f"target ≤ {t.spikes_per_neuron:g} spikes/neuron; " + "; ".join(parts) + ".")


@dataclass(frozen=True)
class ExperimentView:
    e: ExperimentInputs
    describe: str
    runs: dict[str, str]
    absent: dict[str, str]
    verdict: tuple[str, list[str]] | None
    working: DtypeCheck | None
    front: list[Trial]
    target: str | None
    sweep_kinds: list[SweepKind]
    figures: dict[str, Figures]
    pareto_html: str | None


def experiment_figures(e: ExperimentInputs, root: Path, prefix: str) -> dict[str, Figures]:
    plots = Path("plots") / e.name
    curve = {s: [(plots / f"{s}_curve.png", caption)] if e.result(s) else []
             for s, caption in (("pretrain", "ReLU pretraining"), ("finetune", "SNN fine-tuning"))}
    return {"pretrain": figures(root, prefix, curve["pretrain"], "pretrain", e.name),
            "finetune": figures(root, prefix, curve["finetune"], "finetune", e.name),
            "evaluate": figures(root, prefix, [(plots / p, c) for p, c in EVALUATE_PLOTS], "evaluate", e.name),
            "sweep": figures(root, prefix, [(plots / SWEEP_PLOT[k], SWEEP_TITLE[k].lower()) for k in KINDS],
                             "sweep", e.name),
            "tune": figures(root, prefix, [(plots / "pareto.png", "Pareto front")], "tune", e.name)}


def absent_notes(e: ExperimentInputs) -> dict[str, str]:
    """What to say where a result file is missing (the tune outputs: also when nothing asks for them)."""
    notes = {s: not_run(Path("metrics") / e.name / f"{s}.json", s, e.name) for s in STAGES}
    notes["pareto"] = not_run(Path("plots") / e.name / "pareto.json", "tune", e.name) if e.tuned else (
        f"Not run: params.yaml has no tune section for this experiment. Add `tune: {{{e.name}: {{}}}}` "
        f"(docs/tuning.md) and run {produce('tune', e.name)}.")
    return notes


def experiment_view(e: ExperimentInputs, runs: dict[str, RunRef], root: Path, prefix: str,
                    ui: str | None = None) -> ExperimentView:
    html = Path("plots") / e.name / "pareto.html"
    return ExperimentView(
        e=e, describe=describe(e), runs={s: runs[s].text(ui) for s in STAGES}, absent=absent_notes(e),
        verdict=verdict(e.convert, e.params.convert.rel_tolerance) if e.convert else None,
        working=e.convert.in_dtype(e.params.dtype) if e.convert and e.params.dtype != "float64" else None,
        front=[t for t in e.pareto.front if not t.baseline] if e.pareto else [],
        target=target_text(e.pareto) if e.pareto else None, sweep_kinds=sweep_kinds(e),
        figures=experiment_figures(e, root, prefix),
        pareto_html=prefix + html.as_posix() if (root / html).is_file() else None)


# -- the paper table -----------------------------------------------------------------------------------


def _names(names: list[str], not_run_count: int) -> str:
    if not names:
        return "none in params.yaml"
    missing = "" if not not_run_count else ("evaluate not run" if len(names) == 1 else f"{not_run_count} not evaluated")
    if len(names) <= 3:
        return ", ".join(code(n) for n in names) + (f" ({missing})" if missing else "")
    return f"{code(names[0])} … {code(names[-1])} ({len(names)} experiments" + (f"; {missing})" if missing else ")")


def paper_row(dataset: str, model: str, l1: bool, relu: paper.Value | None, snn: paper.Value | None,
              spikes: paper.Value | None, exps: list[ExperimentInputs]) -> list[str]:
    done = [e.evaluate for e in exps if e.evaluate is not None]
    snn_ours = [r.snn_accuracy for r in done]
    diff = f"{statistics.fmean(snn_ours) * 100 - snn.mean:+.2f}" if snn is not None and snn_ours else DASH
    return [paper.dataset_label(dataset), paper.model_label(model), "yes" if l1 else "no",
            relu.text() if relu else DASH, mean_std([r.relu_accuracy for r in done], pct),
            snn.text() if snn else DASH, mean_std(snn_ours, pct), diff,
            spikes.text() if spikes else DASH, mean_std([r.spikes_per_neuron for r in done], fixed),
            _names([e.name for e in exps], len(exps) - len(done))]


def paper_label(dataset: str, model: str, l1: bool) -> str:
    """A paper row in words: 'CIFAR10 VGG16 + L1'."""
    return f"{paper.dataset_label(dataset)} {paper.model_label(model)}" + (" + L1" if l1 else "")


def paper_rows(experiments: tuple[ExperimentInputs, ...]) -> tuple[list[list[str]], list[str]]:
    """(rows, not in this profile): a row for every SPEC 9 result (with an L1 row where ours has one) that
    this profile's params define an experiment for, then our rows the paper does not have; the SPEC 9
    results no experiment of this profile reproduces, as labels for the one line below the table."""
    groups: dict[tuple[str, str, bool], list[ExperimentInputs]] = {}
    for e in experiments:
        groups.setdefault((e.params.dataset, paper.family(e.params.model.name), e.l1), []).append(e)
    rows, seen, absent = [], set(), []
    for p in paper.PAPER:
        for l1 in (False, True):
            key = (p.dataset, p.model, l1)
            if l1 and p.snn_l1 is None and key not in groups:
                continue
            seen.add(key)
            if key not in groups:
                absent.append(paper_label(*key))
                continue
            snn = p.snn_l1 if l1 else p.snn
            rows.append(paper_row(*key, p.relu if snn else None, snn, p.spikes_l1 if l1 else p.spikes, groups[key]))
    rows += [paper_row(*key, None, None, None, exps) for key, exps in groups.items() if key not in seen]
    return rows, absent


# -- beyond the paper ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BeyondView:
    """An experiment marked ``beyond_paper``: its evaluated SNN beside every paper result on its dataset and
    the best published single-spike result, its spikes and SynOps per layer, and its L1 front."""

    v: ExperimentView
    rows: list[list[str]]
    margin: str | None
    layers: list[list[str]]


def beyond_rows(e: ExperimentInputs) -> list[list[str]]:
    """[network, source, SNN %, ReLU %, spikes/neuron, SynOps per sample, energy SNN/ANN]: ours first."""
    ev = e.evaluate
    ours = [f"{code(e.name)} ({e.params.model.name})", "this profile (evaluate, test)"]
    ours += ([pct(ev.snn_accuracy), pct(ev.relu_accuracy), fixed(ev.spikes_per_neuron), big(ev.synops_per_sample),
              fixed(ev.energy_pj.ratio, 4)] if ev else ["not run"] + [DASH] * 4)
    rows = [ours]
    for p in paper.PAPER:
        if p.dataset != e.params.dataset:
            continue
        for l1, snn, spikes in ((False, p.snn, p.spikes), (True, p.snn_l1, p.spikes_l1)):
            if snn is not None:
                rows.append([paper_label(p.dataset, p.model, l1), paper.PAPER_SOURCE, snn.text(), p.relu.text(),
                             spikes.text() if spikes else DASH, DASH, DASH])
    best = paper.BEST_SINGLE_SPIKE
    if e.params.dataset in best:
        rows.append(["best published single-spike", paper.BEST_SINGLE_SPIKE_SOURCE,
                     f"{best[e.params.dataset]:.2f}"] + [DASH] * 4)
    return rows


def beyond_margin(e: ExperimentInputs) -> str | None:
    """Our SNN against the best paper row and the best single-spike result on the dataset, in points."""
    if e.evaluate is None:
        return None
    ours = 100 * e.evaluate.snn_accuracy
    on_dataset = [p for p in paper.PAPER if p.dataset == e.params.dataset]
    refs = []
    if on_dataset:
        top = max(on_dataset, key=lambda p: p.snn.mean)
        refs.append((f"the paper's best ({paper_label(top.dataset, top.model, False)})", top.snn.mean))
    if e.params.dataset in paper.BEST_SINGLE_SPIKE:
        refs.append((f"the best published single-spike result ({paper.BEST_SINGLE_SPIKE_SOURCE})",
                     paper.BEST_SINGLE_SPIKE[e.params.dataset]))
    if not refs:
        return None
    return f"SNN test accuracy {ours:.2f} %: " + "; ".join(f"{ours - v:+.2f} pt against {label} ({v:.2f} %)"
                                                          for label, v in refs) + "."


def beyond_layers(e: ExperimentInputs) -> list[list[str]]:
    ev = e.evaluate
    if ev is None:
        return []
    return [[layer.removeprefix("layer"), fixed(spikes, 4),
             big(ev.synops_per_layer[layer]) if layer in ev.synops_per_layer else DASH]
            for layer, spikes in ev.spikes_per_neuron_per_layer.items()]


def beyond_views(views: list[ExperimentView]) -> list[BeyondView]:
    return [BeyondView(v, beyond_rows(v.e), beyond_margin(v.e), beyond_layers(v.e))
            for v in views if v.e.params.beyond_paper]


# -- the learning dynamics -------------------------------------------------------------------------------

#: the B1 == ReLU claim of SPEC 4 holds when the training losses agree this closely at every record
B1_RELU_TOLERANCE = 1e-12
#: a gain ratio to B1 at least this large (or its inverse at most) is called exploding (vanishing)
GAIN_RATIO = 10.0


@dataclass(frozen=True)
class DynamicsView:
    """The dynamics part: tables of the learning-rate search, the networks and the spectra, and every
    sentence about the networks, each generated from the numbers it states."""

    selection_header: list[str]
    selection_rows: list[list[str]]
    network_rows: list[list[str]]
    spectra_rows: list[list[str]]
    findings: list[str]


def _lr(x: float | None) -> str:
    return DASH if x is None else f"{x:g}"


def _range(values: tuple) -> str:
    vals = [v for v in values if v is not None]
    return DASH if not vals else (f"{min(vals):.3g}–{max(vals):.3g}" if len(vals) > 1 else f"{vals[0]:.3g}")


def _ratio_word(ratio: float | None) -> str:
    if ratio is None:
        return ""
    if ratio >= GAIN_RATIO:
        return f"{ratio:.3g}× B1's: exploding"
    if ratio <= 1 / GAIN_RATIO:
        return f"{1 / ratio:.3g}× below B1's: vanishing"
    return f"{ratio:.3g}× B1's: comparable"


def _level(acc: float | None, chance: float) -> str:
    """The training accuracy at the last record, placed against 90 % and twice chance."""
    if acc is None:
        return "was not trained"
    if acc >= 0.9:
        return f"ends at {pct(acc)} % training accuracy, at least 90 %"
    if acc > 2 * chance:
        return f"ends at {pct(acc)} % training accuracy, above twice chance ({pct(2 * chance)} %) but below 90 %"
    return f"ends at {pct(acc)} % training accuracy, within twice chance ({pct(2 * chance)} %)"


def _stopped(n, target: float | None) -> str:
    return {"converged": f"stopped at {pct(target, 0)} % running training accuracy after {n.epochs:,} epochs",
            "stalled": f"stopped after {n.epochs:,} epochs without a rise of its best running training accuracy",
            "diverged": f"diverged (NaN/inf loss) after {n.epochs:,} epochs",
            "epochs": f"ran all {n.epochs:,} epochs"}[n.stop]


def _spectra_row(label: str, s: Spectra) -> list[str]:
    hidden_b = [b for b in s.min_positive_slope if b is not None]
    return [label, _range(s.layer_top_singular_value), gen(s.product_top_singular_value, 3),
            gen(s.square_product_spectral_radius, 3),
            pct(s.eigenvalues_outside_unit_circle, 1), gen(s.max_abs_eigenvalue, 3),
            f"{sum(s.nonpositive_slopes):,}", gen(min(hidden_b), 3) if hidden_b else DASH]


def dynamics_view(d: DynamicsResult) -> DynamicsView:
    c, nets, sel = d.config, d.networks, d.selection
    label = LABELS["network"]
    grid = list(c.lr_grid)
    selection_rows = []
    for name, s in sel.items():
        cells = {r.lr: ("diverged" if r.diverged else f"{gen(r.val_loss, 3)} ({pct(r.val_accuracy)} %)")
                 for r in s.runs}
        selection_rows.append([label(name), *(cells[lr] if lr in cells else DASH for lr in grid), _lr(s.chosen_lr)])
    network_rows = []
    for name, n in nets.items():
        proj = DASH if n.projections is None else f"{n.projections:,} ({n.projected_neurons:,})"
        slopes = DASH if n.nonpositive_slopes_init is None else f"{n.nonpositive_slopes_init:,} → " + (
            DASH if n.nonpositive_slopes is None else f"{n.nonpositive_slopes:,}")
        network_rows.append([
            label(name), _lr(n.lr), n.stop, f"{n.epochs:,}", pct(n.initial_train_accuracy), pct(n.train_accuracy),
            pct(n.val_accuracy), pct(n.test_accuracy), pct(n.best_test_accuracy),
            DASH if n.first_epoch_train_accuracy_90 is None else f"{n.first_epoch_train_accuracy_90:,}",
            sci(n.max_train_loss_gap_to_relu, 1) if name != "relu" else DASH,
            fixed(n.cosine_to_relu, 6) if name != "relu" else DASH, proj, slopes,
            DASH if n.causality_violations is None else f"{n.causality_violations:,}"])
    spectra_rows = [_spectra_row(f"{LABELS['init'](k)}, init", s) for k, s in d.init_spectra.items()]
    spectra_rows += [_spectra_row(f"{LABELS['init'](k)}, trained", s) for k, s in d.final_spectra.items()]
    return DynamicsView(["network", *(f"lr {lr:g}" for lr in grid), "chosen"], selection_rows, network_rows,
                        spectra_rows, dynamics_findings(d))


def dynamics_findings(d: DynamicsResult) -> list[str]:
    """Sentences about the networks, each stating a number of the result and only what it shows."""
    c, nets, sel = d.config, d.networks, d.selection
    chance = 1 / c.classes
    label = LABELS["network"]
    out = []
    chosen = {k: s.chosen_lr for k, s in sel.items()}
    criterion = "lowest validation loss" if c.selection_metric == "val_loss" else "best validation accuracy"
    out.append(f"Learning rates, each chosen on {c.val_samples:,} validation samples (the {criterion} "
               f"after {c.selection_epochs} epochs at each of {', '.join(_lr(x) for x in c.lr_grid)}): "
               + "; ".join(f"{label(k)} {_lr(v) if v is not None else 'none (every value diverged)'}"
                           for k, v in chosen.items()) + ".")
    relu_lr = chosen["relu"] if "relu" in chosen else None
    for name in ("alpha1_smart", "alpha1_standard"):
        lr = chosen[name] if name in chosen else None
        if lr is not None and relu_lr is not None and lr != relu_lr:
            factor = relu_lr / lr
            out.append(f"{label(name)}'s learning rate is {factor:.3g}× smaller than ReLU's." if factor > 1 else
                       f"{label(name)}'s learning rate is {1 / factor:.3g}× larger than ReLU's.")
        elif lr is not None and lr == relu_lr:
            out.append(f"{label(name)} chose the same learning rate as ReLU ({_lr(lr)}).")
    relu, b1 = (nets[k] if k in nets else None for k in ("relu", "b1"))
    control = nets["relu_ulp"] if "relu_ulp" in nets else None
    tol = d.gap_tolerance
    if relu is not None and b1 is not None and b1.max_train_loss_gap_to_relu is not None:
        gap, n = b1.max_train_loss_gap_to_relu, b1.common_records_with_relu
        if b1.first_epoch_over_gap_tolerance is None:
            out.append(f"B1's training loss equals ReLU's to within {sci(gap)} (≤ {tol:g}) at all {n} records they "
                       f"share; the largest training-accuracy difference is "
                       f"{pct(b1.max_train_accuracy_gap_to_relu)} pt.")
        else:
            out.append(f"B1's training loss equals ReLU's to within {tol:g} at {b1.records_within_gap_tolerance} of "
                       f"the {n} records they share; the difference first exceeds {tol:g} at epoch "
                       f"{b1.first_epoch_over_gap_tolerance:,} (largest {sci(gap)}; largest training-accuracy "
                       f"difference {pct(b1.max_train_accuracy_gap_to_relu)} pt). At initialisation B1's "
                       f"log-softmax differs from ReLU's by {sci(d.init_check.b1_max_log_softmax_diff_to_relu)} "
                       f"(float64 rounding: its activations pass through spike times).")
        if control is not None and control.common_records_with_relu:
            if control.first_epoch_over_gap_tolerance is None:
                out.append(f"Control: ReLU with every initial parameter moved by one ulp, trained at ReLU's rate, "
                           f"stays within {tol:g} of ReLU's training loss at all "
                           f"{control.common_records_with_relu} records "
                           f"(largest {sci(control.max_train_loss_gap_to_relu)}).")
            else:
                out.append(f"Control: ReLU with every initial parameter moved by one ulp (≤ 2.2e-16 relative), trained "
                           f"at ReLU's rate, also differs from ReLU's training loss by more than {tol:g}, first at "
                           f"epoch {control.first_epoch_over_gap_tolerance:,} (largest "
                           f"{sci(control.max_train_loss_gap_to_relu)}): this training run amplifies differences of "
                           f"rounding size.")
        for name, n_ in (("relu", relu), ("b1", b1)):
            first = n_.first_epoch_train_accuracy_99
            out.append(f"{label(name)} {_level(n_.train_accuracy, chance)}; "
                       f"it {_stopped(n_, c.target_train_accuracy)}; "
                       + (f"first ≥ 99 % at epoch {first:,}" if first is not None else "never ≥ 99 % at a record")
                       + f"; test accuracy {pct(n_.test_accuracy)} %.")
    for name in ("alpha1_smart", "alpha1_standard"):
        if name not in nets:
            continue
        n_ = nets[name]
        first = n_.first_epoch_train_accuracy_90
        line = (f"{label(name)} {_level(n_.train_accuracy, chance)}; it {_stopped(n_, c.target_train_accuracy)}; best "
                f"{pct(n_.best_train_accuracy)} %; "
                + (f"first ≥ 90 % at epoch {first:,}" if first is not None else "never ≥ 90 % at a record")
                + f"; test accuracy {pct(n_.test_accuracy)} %.")
        out.append(line)
        if n_.max_train_loss_gap_to_relu is not None and relu is not None:
            out.append(f"{label(name)}'s training loss differs from ReLU's by up to "
                       f"{gen(n_.max_train_loss_gap_to_relu, 3)} at the {n_.common_records_with_relu} records both "
                       f"have (ReLU's last is epoch {relu.epochs:,})"
                       + (f"; its reverse-mapped weights end at cosine {fixed(n_.cosine_to_relu, 4)} to ReLU's"
                          if n_.cosine_to_relu is not None else "") + ".")
        if n_.projections is not None:
            out.append(f"{label(name)}: {n_.projections:,} slope projections onto B = {c.slope_floor:g} "
                       f"({n_.projected_neurons:,} distinct neurons); neurons with B ≤ 0: "
                       f"{n_.nonpositive_slopes_init:,} at initialisation, "
                       f"{DASH if n_.nonpositive_slopes is None else f'{n_.nonpositive_slopes:,}'} at the end.")
    b1s = d.init_spectra["b1"] if "b1" in d.init_spectra else None
    for name in ("alpha1_smart", "alpha1_standard"):
        if name not in d.init_spectra or b1s is None:
            continue
        s = d.init_spectra[name]
        top, ref = s.product_top_singular_value, b1s.product_top_singular_value
        ratio = top / ref if top is not None and ref else None
        text = (f"At initialisation, {LABELS['init'](name)}'s hidden-layer depth product J(N−1)…J(1) has median top "
                f"singular value {gen(top, 3)} vs B1's {gen(ref, 3)} ({_ratio_word(ratio)}); single hidden layers "
                f"{_range(s.layer_top_singular_value)} (B1 {_range(b1s.layer_top_singular_value)})")
        if s.eigenvalues_outside_unit_circle is not None and b1s.eigenvalues_outside_unit_circle is not None:
            text += (f"; {pct(s.eigenvalues_outside_unit_circle, 1)} % of the square blocks' eigenvalues lie "
                     f"outside the unit circle (B1 {pct(b1s.eigenvalues_outside_unit_circle, 1)} %)")
        hidden_b = [b for b in s.min_positive_slope if b is not None]
        dead = sum(s.nonpositive_slopes)
        text += (f"; {dead:,} hidden neurons start with B ≤ 0 (silent, zero gradient)" if dead else
                 "; no hidden neuron starts with B ≤ 0")
        if hidden_b:
            text += f", the smallest positive B is {gen(min(hidden_b), 3)} (gain 1/B = {gen(1 / min(hidden_b), 3)})"
        out.append(text + ".")
    sm = d.smart_init
    out.append(f"The smart initialisation's ReLU row sums lie in [{gen(min(sm.row_sum_min), 3)}, "
               f"{gen(max(sm.row_sum_max), 3)}] over all layers (bounds [{sm.row_sum_bounds[0]:g}, "
               f"{sm.row_sum_bounds[1]:g}]{'; rows re-centred to sum 0 first' if sm.recentred else ''}); at "
               f"initialisation its log-softmax differs from ReLU's by up to "
               f"{sci(d.init_check.alpha1_smart_max_log_softmax_diff_to_relu)}"
               + (" (a re-centred draw is a different network)." if sm.recentred else "."))
    viol = {k: n.causality_violations for k, n in nets.items() if n.causality_violations is not None}
    if viol:
        out.append("Causality violations on the training subset at the last record: "
                   + ", ".join(f"{label(k)} {v:,}" for k, v in viol.items()) + ".")
    return out


# -- MLflow ----------------------------------------------------------------------------------------------


def run_keys(inputs: Inputs) -> dict[tuple[str, str], RunKey]:
    """The run to look up for every result that exists (by the params hash it carries)."""
    keys = {}
    for e in inputs.experiments:
        for stage in STAGES:
            h = e.params_hash(stage)
            if h is not None:
                keys[(e.name, stage)] = RunKey(e.name, f"{stage}@{e.name}", h)
    if inputs.dynamics is not None:
        keys[("dynamics", "dynamics")] = RunKey("dynamics", "dynamics", inputs.dynamics.params_hash)
    return keys


def run_of(runs: dict[tuple[str, str], RunRef], experiment: str, stage: str) -> RunRef:
    return runs[(experiment, stage)] if (experiment, stage) in runs else NO_RUN


def mlflow_rows(inputs: Inputs, runs: dict[tuple[str, str], RunRef], ui: str | None = None) -> list[list[str]]:
    """Every stage of every experiment with results (tune where asked for or run), and the dynamics study."""
    rows = [[code(e.name), s, run_of(runs, e.name, s).text(ui)]
            for e in inputs.experiments if e.has_results for s in STAGES if s != "tune" or e.tuned or e.pareto]
    if inputs.dynamics is not None or inputs.params.dynamics is not None:
        rows.append(["dynamics", "dynamics", run_of(runs, "dynamics", "dynamics").text(ui)])
    return rows


# -- the whole report --------------------------------------------------------------------------------------


def context(inputs: Inputs, runs: dict[tuple[str, str], RunRef], runs_problem: str | None, root: Path,
            prefix: str, ui: str | None = None, profile: str | None = None) -> dict:
    """Everything templates/report.md.j2 shows; run ids link to the MLflow UI at ``ui`` (None: plain ids)."""
    views = [experiment_view(e, {s: run_of(runs, e.name, s) for s in STAGES}, root, prefix, ui)
             for e in inputs.experiments]
    table_rows, absent = paper_rows(inputs.experiments)
    dyn_plots = [(Path("plots") / "dynamics" / p, p.removesuffix(".png").replace("_", " ")) for p in DYNAMICS_PLOTS]
    return {
        "params": inputs.params, "experiments": views, "paper_rows": table_rows, "paper_absent": absent,
        "profile": profile or os.getenv("TTFS_PROFILE") or "default", "beyond": beyond_views(views),
        "best_single_spike_source": paper.BEST_SINGLE_SPIKE_SOURCE,
        "best_single_spike": ", ".join(f"{paper.dataset_label(d)} {v:.2f}" for d, v in paper.BEST_SINGLE_SPIKE.items()),
        "dynamics": inputs.dynamics, "dynamics_figures": figures(root, prefix, dyn_plots, "dynamics", None),
        "dynamics_view": dynamics_view(inputs.dynamics) if inputs.dynamics is not None else None,
        "dynamics_absent": not_run(Path("metrics") / "dynamics.json", "dynamics", None),
        "dynamics_run": run_of(runs, "dynamics", "dynamics").text(ui),
        "mlflow_rows": mlflow_rows(inputs, runs, ui), "runs_problem": runs_problem, "mlflow_ui": ui,
        "produce": produce, "dataset_label": paper.dataset_label, "model_label": paper.model_label,
    }
