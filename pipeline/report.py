"""The report: every experiment's numbers beside the paper's, as Markdown and as a standalone HTML page.

:func:`build_report` reads what the stages wrote (``metrics/<exp>/*.json``, ``plots/<exp>/*.png``,
``metrics/dynamics.json``, ``plots/dynamics/*.png``) for every experiment listed in params.yaml and
assembles one document: the paper-vs-reproduced table (SPEC 9, the paper's numbers are data in
:data:`PAPER`), conversion exactness, evaluation (accuracy, spikes, SynOps, energy, latency),
hardware-constraint sweeps, the L1 Pareto front, the learning dynamics, and the MLflow run behind each
stage. Missing parts (a stage not run, no ``tune`` section, no dynamics study) become a line saying
what is missing and which command produces it; the report never fails because of them.

The document is built once as a list of blocks (headings, paragraphs, tables, figures) and rendered
twice: to Markdown (figures as relative links from the output directory to ``plots/``) and to one
self-contained HTML page (inline CSS, figures embedded as base64 PNG). Given the same files the output
is byte-for-byte the same except for the MLflow run ids, which are looked up (never created) in the
tracking store: the latest FINISHED run of each stage whose ``params_hash`` tag matches params.yaml
(see :mod:`pipeline.tracking` for the tags), else the latest finished one (flagged), else ``n/a``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# -- the paper (SPEC 9) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """A published number in percent (or spikes per neuron): mean, optional std, optional remark."""

    mean: float
    std: float | None = None
    note: str | None = None

    def text(self, digits: int = 2) -> str:
        s = f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.std is not None else "")
        return s + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class PaperResult:
    """One row of SPEC 9. ``*_l1``: the same network fine-tuned with an L1 penalty on the activations."""

    dataset: str
    model: str
    relu: Value
    snn: Value
    snn_l1: Value | None = None
    spikes: Value | None = None
    spikes_l1: Value | None = None


#: Stanojevic et al., Nat. Commun. 15, 6793 (2024), as restated in SPEC 9. Accuracies in percent.
PAPER: tuple[PaperResult, ...] = (
    PaperResult("mnist", "fc2", Value(98.30), Value(98.30)),
    PaperResult("mnist", "fc16", Value(98.43, 0.07), Value(98.43, 0.07)),
    PaperResult("mnist", "vgg16", Value(99.57, 0.01), Value(99.58, 0.01)),
    PaperResult("fashion_mnist", "fc2", Value(90.14), Value(90.14)),
    PaperResult("fashion_mnist", "lenet5", Value(90.91, 0.17), Value(90.94, 0.25)),
    PaperResult("cifar10", "vgg16", Value(93.59, note="converted"), Value(93.69, 0.02), Value(93.28, 0.02),
                Value(0.38), Value(0.20)),
    PaperResult("cifar100", "vgg16", Value(70.48, note="converted"), Value(72.23, 0.06), Value(72.20, 0.04),
                Value(0.38), Value(0.24)),
    PaperResult("places365", "vgg16", Value(52.69, note="converted"), Value(53.86, 0.02), Value(48.88, 0.06),
                Value(0.54), Value(0.27)),
)
#: Best published single-spike accuracies (at most one spike per neuron): Che et al., AAAI 2026 (PTTFS).
BEST_SINGLE_SPIKE = {"mnist": 99.51, "fashion_mnist": 93.14, "cifar10": 95.06, "cifar100": 74.07}
#: What the paper reports under each hardware constraint (SPEC 5), for CIFAR10 VGG16.
PAPER_CONSTRAINTS = {
    "jitter": "the paper fine-tunes and evaluates under jitter (no single headline number)",
    "time_steps": "paper (CIFAR10 VGG16): > 90 % with K = 16 time steps per window after fine-tuning",
    "weight_bits": "paper (CIFAR10 VGG16): > 90 % with 4-bit weights after quantisation-aware fine-tuning",
    "latency_factor": "paper (CIFAR10 VGG16): > 90 % at up to 4× lower latency after fine-tuning",
}
DATASET_LABEL = {"mnist": "MNIST", "fashion_mnist": "fMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100",
                 "places365": "PLACES365", "synthetic": "synthetic"}
MODEL_LABEL = {"fc2": "FC2", "fc16": "FC16", "lenet5": "LeNet5", "vgg16": "VGG16"}
#: zoo variants that are the paper's VGG16 on other inputs
MODEL_FAMILY = {"vgg16_mnist": "vgg16", "vgg16_places365": "vgg16"}

STAGES = ("pretrain", "convert", "finetune", "evaluate", "sweep", "tune")
KINDS = ("jitter", "time_steps", "weight_bits", "latency_factor")
SWEEP_PLOT = {"jitter": "sweep_jitter.png", "time_steps": "sweep_time_steps.png",
              "weight_bits": "sweep_weight_bits.png", "latency_factor": "sweep_latency.png"}
SWEEP_VALUE = {"jitter": "jitter σ (τ_c)", "time_steps": "time steps K", "weight_bits": "weight bits b",
               "latency_factor": "latency factor f"}
SWEEP_TITLE = {"jitter": "Spike-time jitter", "time_steps": "Time quantisation",
               "weight_bits": "Weight quantisation", "latency_factor": "Reduced latency"}
INIT_LABEL = {"b1": "B1", "alpha1_smart": "α1 smart", "alpha1_standard": "α1 standard"}
DYNAMICS_PLOTS = ("training_curves.png", "cosine.png", "jacobian_spectra.png", "jacobian_depth.png")
DYNAMICS_LABEL = {"relu": "ReLU", "b1": "B1 (converted ReLU init)", "alpha1_smart": "α1, smart init",
                  "alpha1_standard": "α1, standard init", "relu_alpha1_smart": "ReLU twin of α1 smart",
                  "relu_alpha1_standard": "ReLU twin of α1 standard"}
#: MLflow: (tag dvc_stage, tag role) of each stage's top-level run (see pipeline/tracking.py, stages/*.py)
STAGE_ROLE = {"pretrain": "reference", "convert": "snn", "finetune": "snn", "evaluate": "snn", "sweep": "sweep",
              "tune": "tune_study"}
DEFAULT_MAX_INLINE_BYTES = 40_000_000
NA = "n/a"
DASH = "—"


# -- the document model ------------------------------------------------------------------------------


@dataclass
class Heading:
    level: int
    text: str

    @property
    def anchor(self) -> str:
        return slug(self.text)


@dataclass
class Para:
    """A paragraph. ``kind``: text, missing (a part that is not there, and how to produce it) or note."""

    text: str
    kind: str = "text"


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: list[bool] | None = None  # right-aligned columns


@dataclass
class Figure:
    path: Path  # relative to the project root, e.g. plots/<exp>/raster.png
    caption: str


@dataclass
class Gallery:
    figures: list[Figure]


Block = Heading | Para | Bullets | Table | Gallery


def slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"`", "", text.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


# -- formatting ---------------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        if isinstance(x, str):
            try:
                x = float(x)
            except ValueError:
                return None
        else:
            return None
    x = float(x)
    return x if math.isfinite(x) else None


def pct(x: Any, digits: int = 2) -> str:
    """A fraction as percent: 0.9014 -> 90.14."""
    v = _num(x)
    return DASH if v is None else f"{100 * v:.{digits}f}"


def pts(x: Any) -> str:
    """A difference of fractions in percentage points, signed."""
    v = _num(x)
    return DASH if v is None else f"{100 * v:+.2f}"


def sci(x: Any, digits: int = 1) -> str:
    v = _num(x)
    return DASH if v is None else f"{v:.{digits}e}"


def gen(x: Any, digits: int = 4) -> str:
    v = _num(x)
    return DASH if v is None else f"{v:.{digits}g}"


def fixed(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return DASH if v is None else f"{v:.{digits}f}"


def integer(x: Any) -> str:
    v = _num(x)
    return DASH if v is None else f"{round(v):,}"


def big(x: Any) -> str:
    """Energies and operation counts: thousands separators, 3 significant digits below 100."""
    v = _num(x)
    if v is None:
        return DASH
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def mean_std(values: list[float], fmt) -> str:
    """'m ± s (n = k)' over experiments (sample std), or the single value."""
    if not values:
        return "not run"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.fmean(values))} ± {fmt(statistics.stdev(values)).lstrip('+')} (n = {len(values)})"


def code(text: Any) -> str:
    return f"`{text}`"


# -- params -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentInfo:
    """What the report needs of one experiment's params (read leniently from the raw params.yaml)."""

    name: str
    dataset: str
    model: str
    model_options: dict
    seed: Any
    dtype: str
    l1_pretrain: float
    l1_finetune: float
    finetune_mode: str
    nonpositive_bias: bool
    rel_tolerance: float
    has_sweep_section: bool
    has_tune_section: bool

    @property
    def family(self) -> str:
        return MODEL_FAMILY.get(self.model, self.model)

    @property
    def l1(self) -> bool:
        return self.l1_pretrain > 0 or self.l1_finetune > 0

    @property
    def variant(self) -> str:
        return "L1" if self.l1 else "no L1"

    def describe(self) -> str:
        model = MODEL_LABEL.get(self.family, self.model) + (f" ({self.model})" if self.family != self.model else "")
        options = ", ".join(f"{k}={v}" for k, v in sorted(self.model_options.items()))
        parts = [f"dataset {DATASET_LABEL.get(self.dataset, self.dataset)}",
                 f"model {model}" + (f" [{options}]" if options else ""), f"seed {self.seed}", f"{self.dtype}",
                 f"fine-tuning: {self.finetune_mode}"]
        l1 = [f"{where} λ = {v:g}" for where, v in (("pretrain", self.l1_pretrain), ("finetune", self.l1_finetune))
              if v > 0]
        parts.append("L1: " + (", ".join(l1) if l1 else "none"))
        if self.nonpositive_bias:
            parts.append("hidden biases kept <= 0 (docs/sparsity.md)")
        return "; ".join(parts) + "."


def _section(d: Any, key: str) -> dict:
    v = d.get(key) if isinstance(d, Mapping) else None
    return v if isinstance(v, Mapping) else {}


def _float(x: Any, default: float) -> float:
    v = _num(x)
    return default if v is None else v


def experiments_of(params: Mapping) -> list[ExperimentInfo]:
    """The experiments of a raw params.yaml mapping, in file order."""
    tune_top = _section(params, "tune")
    out = []
    for name, raw in _section(params, "experiments").items():
        raw = raw if isinstance(raw, Mapping) else {}
        model = _section(raw, "model")
        out.append(ExperimentInfo(
            name=str(name), dataset=str(raw.get("dataset", "?")), model=str(model.get("name", "?")),
            model_options={k: v for k, v in model.items() if k != "name"}, seed=raw.get("seed", DASH),
            dtype=str(raw.get("dtype", "float32")),
            l1_pretrain=_float(_section(raw, "pretrain").get("l1"), 0.0),
            l1_finetune=_float(_section(raw, "finetune").get("l1"), 0.0),
            finetune_mode=str(_section(raw, "finetune").get("mode", "converted")),
            nonpositive_bias=any(str(_section(raw, s).get("nonpositive_bias", False)).lower() == "true"
                                 for s in ("pretrain", "finetune")),
            rel_tolerance=_float(_section(raw, "convert").get("rel_tolerance"), 1e-9),
            has_sweep_section="sweep" in raw, has_tune_section=name in tune_top or "tune" in raw,
        ))
    return out


def expected_hashes(params: Mapping) -> dict[tuple[str, str], str]:
    """(experiment, stage) -> the params_hash tag that stage's MLflow run carries for these params.

    Computed exactly as the stages compute it; any part that cannot be computed (invalid params, a
    section the schema does not know) is left out, and its run is then found by stage alone.
    """
    out: dict[tuple[str, str], str] = {}
    try:
        from . import params as P
        from .runner import Experiment
    except Exception:  # noqa: BLE001 - a broken install must not break the report
        return out
    fields = set(P.ExperimentParams.model_fields)
    clean = {k: v for k, v in params.items() if k in ("data", "experiments") or str(k).startswith("x-")}
    raw_exps = _section(params, "experiments")
    clean["experiments"] = {n: ({k: v for k, v in s.items() if k in fields} if isinstance(s, Mapping) else s)
                            for n, s in raw_exps.items()}
    try:
        parsed = P.parse(clean)
    except Exception:  # noqa: BLE001
        return out
    for name, ep in parsed.experiments.items():
        exp = Experiment(name, ep)
        for stage in ("pretrain", "convert", "finetune", "evaluate"):
            out[(name, stage)] = P.params_hash(exp.stage_params(stage))
        if isinstance(raw_exps.get(name), Mapping) and "sweep" in raw_exps[name]:
            out[(name, "sweep")] = P.params_hash(P.as_dict({**exp.shared(), "sweep": ep.sweep}))
    section = params.get("dynamics")
    if isinstance(section, Mapping) and "dataset" in section:
        try:
            dyn = P.parse({"data": params.get("data") or {}, "dynamics": section}).dynamics
            out[("dynamics", "dynamics")] = P.params_hash({"dynamics": P.as_dict(dyn)})
        except P.ParamsError:
            pass
    return out


# -- MLflow -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRef:
    """The MLflow run behind a stage's numbers; ``run_id`` None when there is none to name."""

    run_id: str | None
    note: str = ""

    def text(self) -> str:
        if not self.run_id:
            return NA + (f" ({self.note})" if self.note else "")
        return code(self.run_id) + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class RunQuery:
    key: tuple[str, str]  # (experiment, stage) as the report names it
    mlflow_experiment: str
    dvc_stage: str
    role: str
    expected: dict[str, str] = field(default_factory=dict)  # tags a run of exactly these params carries


def default_tracking_uri(root: Path) -> str:
    """As pipeline.tracking: $MLFLOW_TRACKING_URI, else <root>/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def find_runs(uri: str | None, queries: Iterable[RunQuery],
              root: Path | None = None) -> tuple[dict[tuple[str, str], RunRef], str | None]:
    """({key: RunRef}, problem) by reading the tracking store; nothing is created in it.

    Per query: the latest FINISHED top-level run with the stage's ``dvc_stage`` and ``role`` tags whose
    ``expected`` tags match; else the latest FINISHED one (noted: its params differ); else the latest
    run in any state (noted with its state). A missing sqlite file or an unreachable store gives no
    runs and a one-line ``problem``.
    """
    queries = list(queries)
    if not uri:
        return {}, "run ids not looked up"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        db = Path(uri.removeprefix("sqlite:///"))
        if root is not None and db.resolve().is_relative_to(Path(root).resolve()):
            db = db.resolve().relative_to(Path(root).resolve())  # no machine-specific path in the report
        return {}, f"no MLflow tracking database at {db.as_posix()}"
    try:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        client = MlflowClient(uri)
    except Exception as e:  # noqa: BLE001
        return {}, f"MLflow tracking store not readable ({type(e).__name__}: {str(e)[:200]})"
    found: dict[tuple[str, str], RunRef] = {}
    experiments: dict[str, Any] = {}
    try:
        for q in queries:
            if q.mlflow_experiment not in experiments:
                experiments[q.mlflow_experiment] = client.get_experiment_by_name(q.mlflow_experiment)
            mexp = experiments[q.mlflow_experiment]
            if mexp is None:
                continue
            runs = client.search_runs([mexp.experiment_id],
                                      f"tags.dvc_stage = '{q.dvc_stage}' and tags.role = '{q.role}'",
                                      max_results=500, order_by=["attributes.start_time DESC"])
            runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
            finished = [r for r in runs if r.info.status == "FINISHED"]
            exact = [r for r in finished if all(r.data.tags.get(k) == v for k, v in q.expected.items())]
            if exact:
                found[q.key] = RunRef(exact[0].info.run_id)
            elif finished:
                why = ("latest finished run; its params hash differs from params.yaml's" if q.expected
                       else "latest finished run; params not checked")
                found[q.key] = RunRef(finished[0].info.run_id, why)
            elif runs:
                found[q.key] = RunRef(runs[0].info.run_id, f"latest run, {runs[0].info.status}")
    except Exception as e:  # noqa: BLE001
        return found, f"MLflow lookup stopped ({type(e).__name__}: {str(e)[:200]})"
    return found, None


# -- reading results ----------------------------------------------------------------------------------


class Results:
    """The stage outputs under ``root`` (read once each)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._json: dict[Path, tuple[dict | None, str | None]] = {}

    def json(self, rel: str | Path) -> tuple[dict | None, str | None]:
        """(content, problem): problem is None when read, else 'missing' or why it is unreadable."""
        rel = Path(rel)
        if rel not in self._json:
            path = self.root / rel
            if not path.is_file():
                self._json[rel] = (None, "missing")
            else:
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                    self._json[rel] = (data, None) if isinstance(data, dict) else (None, "not a JSON object")
                except (OSError, ValueError) as e:
                    self._json[rel] = (None, f"unreadable ({type(e).__name__}: {e})")
        return self._json[rel]

    def metrics(self, exp: str, stage: str) -> dict | None:
        return self.json(Path("metrics") / exp / f"{stage}.json")[0]

    def exists(self, rel: str | Path) -> bool:
        return (self.root / rel).is_file()


def _produce(stage: str, exp: str | None) -> str:
    if exp is None:
        return f"`dvc repro {stage}` (or `python -m stages.{stage}`)"
    return f"`dvc repro {stage}@{exp}` (or `python -m stages.{stage} {exp}`)"


def _missing(results: Results, rel: Path, stage: str, exp: str | None) -> Para:
    _, problem = results.json(rel)
    if problem and problem != "missing":
        return Para(f"Not readable: `{rel.as_posix()}` is {problem}. Produce it again with {_produce(stage, exp)}.",
                    "missing")
    return Para(f"Not run: `{rel.as_posix()}` is missing. Produce it with {_produce(stage, exp)}.", "missing")


def _figures(results: Results, items: Iterable[tuple[Path, str]], stage: str, exp: str | None) -> list[Block]:
    present = [Figure(p, c) for p, c in items if results.exists(p)]
    absent = [p for p, _ in items if not results.exists(p)]
    blocks: list[Block] = [Gallery(present)] if present else []
    if absent:
        names = ", ".join(code(p.as_posix()) for p in absent)
        blocks.append(Para(f"Plot{'s' if len(absent) > 1 else ''} missing: {names} (written by "
                           f"{_produce(stage, exp)}).", "missing"))
    return blocks


# -- sections -----------------------------------------------------------------------------------------


class _Builder:
    def __init__(self, params: Mapping, results: Results, runs: dict[tuple[str, str], RunRef],
                 runs_problem: str | None):
        self.params = params
        self.results = results
        self.runs = runs
        self.runs_problem = runs_problem
        self.experiments = experiments_of(params)
        self.blocks: list[Block] = []
        self.problems: list[str] = []

    def run(self, exp: str, stage: str) -> RunRef:
        ref = self.runs.get((exp, stage))
        if ref is None:
            return RunRef(None)
        return ref

    def has_results(self, e: ExperimentInfo) -> bool:
        return any(self.results.json(Path("metrics") / e.name / f"{s}.json")[1] != "missing" for s in STAGES) or \
            self.results.exists(Path("plots") / e.name / "pareto.json")

    def run_line(self, exp: str, stage: str) -> Para:
        return Para(f"MLflow run ({stage}): {self.run(exp, stage).text()}", "note")

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def guarded(self, what: str, fn, *args) -> None:
        """Render one section; a schema surprise becomes a visible line, never a crash."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            msg = f"could not render {what}: {type(e).__name__}: {e}"
            self.problems.append(msg)
            print(f"report: {msg}", file=sys.stderr)
            self.add(Para(f"Could not render {what} ({type(e).__name__}: {e}); the metrics file may come from "
                          "another version of the stage — rerun it.", "missing"))

    # ---- the whole document

    def build(self) -> list[Block]:
        self.add(Heading(1, "Deep time-to-first-spike networks: reproduction report"),
                 Para("Stanojevic et al., *High-performance deep spiking neural networks with 0.3 spikes per "
                      "neuron*, Nature Communications 15, 6793 (2024). Every number below is read from the files "
                      "the pipeline stages wrote (`metrics/`, `plots/`); accuracies are test-set accuracies in "
                      "percent unless noted, spikes per neuron count hidden-layer spikes per sample and neuron "
                      "(SPEC 6)."))
        toc = ["[Paper vs reproduced](#paper-vs-reproduced)", "[All experiments](#all-experiments)"]
        toc += [f"[Experiment {e.name}](#{slug('Experiment ' + e.name)})" for e in self.experiments]
        toc += ["[Learning dynamics](#learning-dynamics)", "[MLflow runs](#mlflow-runs)"]
        self.add(Bullets(toc))
        self.guarded("the paper table", self.paper_table)
        self.guarded("the experiment overview", self.overview)
        for e in self.experiments:
            self.add(Heading(2, f"Experiment {e.name}"), Para(e.describe()))
            if not self.has_results(e):
                self.add(Para(f"Not run: nothing under `metrics/{e.name}/` yet. Produce it with "
                              f"`dvc repro evaluate@{e.name}` (prepare, pretrain, convert, finetune, evaluate), then "
                              f"`dvc repro sweep@{e.name}`" + (f" and `dvc repro tune@{e.name}`" if e.has_tune_section
                                                               else "") + ".", "missing"))
                continue
            self.guarded(f"training of {e.name}", self.training, e)
            self.guarded(f"conversion of {e.name}", self.conversion, e)
            self.guarded(f"evaluation of {e.name}", self.evaluation, e)
            self.guarded(f"hardware constraints of {e.name}", self.sweeps, e)
            self.guarded(f"the Pareto front of {e.name}", self.pareto, e)
        self.guarded("the learning dynamics", self.dynamics)
        self.guarded("the MLflow runs", self.mlflow)
        return self.blocks

    # ---- paper vs ours

    def paper_table(self) -> None:
        self.add(Heading(2, "Paper vs reproduced"))
        groups: dict[tuple[str, str, bool], list[ExperimentInfo]] = {}
        for e in self.experiments:
            groups.setdefault((e.dataset, e.family, e.l1), []).append(e)
        rows: list[list[str]] = []
        seen: set[tuple[str, str, bool]] = set()
        for p in PAPER:
            variants = [False] + ([True] if p.snn_l1 is not None else [])
            variants += [True] if p.snn_l1 is None and (p.dataset, p.model, True) in groups else []
            for l1 in variants:
                key = (p.dataset, p.model, l1)
                seen.add(key)
                snn = p.snn_l1 if l1 else p.snn
                spikes = p.spikes_l1 if l1 else p.spikes
                rows.append(self._paper_row(p.dataset, p.model, l1, p.relu if snn else None, snn, spikes,
                                            groups.get(key, [])))
        for key, exps in groups.items():
            if key not in seen:
                rows.append(self._paper_row(key[0], key[1], key[2], None, None, None, exps))
        header = ["dataset", "model", "L1", "ReLU paper", "ReLU ours", "SNN paper", "SNN ours", "SNN ours − paper (pt)",
                  "spikes/neuron paper", "spikes/neuron ours", "experiments"]
        self.add(Table(header, rows, [False] * 3 + [True] * 7 + [False]))
        self.add(Para("Ours: the `evaluate` stage (ReLU reference and fine-tuned SNN on the test set); several "
                      "experiments of one row (seeds) give mean ± sample std over those that have results. "
                      "Paper: mean ± std where published; an empty paper cell is a number the paper does not give. "
                      "The VGG16 rows convert a pretrained ReLU network and fine-tune the SNN; the MNIST/fMNIST rows "
                      "train the SNN from scratch. The paper profile `params.paper.yaml` defines every row "
                      "(docs/pipeline.md).", "note"),
                 Para("Best published single-spike results (Che et al., AAAI 2026, PTTFS): " + ", ".join(
                     f"{DATASET_LABEL[d]} {v:.2f}" for d, v in BEST_SINGLE_SPIKE.items()) + ".", "note"))

    def _paper_row(self, dataset: str, model: str, l1: bool, relu: Value | None, snn: Value | None,
                   spikes: Value | None, exps: list[ExperimentInfo]) -> list[str]:
        evals = [(e, self.results.metrics(e.name, "evaluate")) for e in exps]
        done = [(e, m) for e, m in evals if m]
        relu_ours = [v for _, m in done if (v := _num(m.get("relu_accuracy"))) is not None]
        snn_ours = [v for _, m in done if (v := _num(m.get("snn_accuracy"))) is not None]
        spikes_ours = [v for _, m in done if (v := _num(m.get("spikes_per_neuron"))) is not None]
        diff = DASH
        if snn is not None and snn_ours:
            diff = f"{statistics.fmean(snn_ours) * 100 - snn.mean:+.2f}"
        names = _names([e.name for e in exps], len(exps) - len(done)) if exps else "none in params.yaml"
        return [DATASET_LABEL.get(dataset, dataset), MODEL_LABEL.get(model, model), "yes" if l1 else "no",
                relu.text() if relu else DASH, mean_std(relu_ours, pct),
                snn.text() if snn else DASH, mean_std(snn_ours, pct), diff,
                spikes.text() if spikes else DASH, mean_std(spikes_ours, fixed), names]

    # ---- overview

    def overview(self) -> None:
        self.add(Heading(2, "All experiments"))
        if not self.experiments:
            self.add(Para("No experiments in params.yaml.", "missing"))
            return
        rows = []
        for e in self.experiments:
            ev = self.results.metrics(e.name, "evaluate") or {}
            conv = self.results.metrics(e.name, "convert")
            energy = ev.get("energy_pj") or {}
            missing = [s for s in STAGES if not self.results.exists(Path("metrics") / e.name / f"{s}.json")
                       and (s != "tune" or e.has_tune_section)]
            rows.append([code(e.name), DATASET_LABEL.get(e.dataset, e.dataset), MODEL_LABEL.get(e.family, e.model),
                         "yes" if e.l1 else "no", pct(ev.get("relu_accuracy")), pct(ev.get("snn_accuracy")),
                         pts(ev.get("delta_accuracy")), pct(ev.get("agreement_with_reference")),
                         self._exact_verdict(e, conv)[0] if conv else DASH, fixed(ev.get("spikes_per_neuron")),
                         fixed(energy.get("ratio")), gen(ev.get("latency")),
                         ", ".join(missing) if missing else "none"])
        self.add(Table(["experiment", "dataset", "model", "L1", "ReLU (%)", "SNN (%)", "Δ (pt)", "agreement (%)",
                        "conversion", "spikes/neuron", "energy SNN/ANN", "latency (τ_c)", "missing stages"], rows,
                       [False] * 4 + [True] * 4 + [False] + [True] * 3 + [False]))
        self.add(Para("Δ = SNN − ReLU accuracy after fine-tuning; agreement = share of test samples where the SNN "
                      "and the ReLU reference predict the same class; conversion = the float64 check of SPEC 3.4; "
                      "tune is listed as missing only for experiments with a tune section.", "note"))

    # ---- per experiment

    def training(self, e: ExperimentInfo) -> None:
        self.add(Heading(3, f"Training ({e.name})"))
        pre, fin = self.results.metrics(e.name, "pretrain"), self.results.metrics(e.name, "finetune")
        rows = []
        if pre:
            rows.append(["ReLU pretraining", pct(pre.get("test_accuracy")), pct(pre.get("train_accuracy")),
                         integer(pre.get("epochs")), f"{integer(pre.get('parameters'))} parameters",
                         self.run(e.name, "pretrain").text()])
        if fin:
            rows.append([f"SNN fine-tuning ({fin.get('mode', e.finetune_mode)})", pct(fin.get("test_accuracy")), DASH,
                         integer(fin.get("epochs")),
                         f"{fixed(fin.get('spikes_per_neuron'))} spikes/neuron, latency {gen(fin.get('latency'))}",
                         self.run(e.name, "finetune").text()])
        if rows:
            self.add(Table(["stage", "test accuracy (%)", "train accuracy (%)", "epochs", "details", "MLflow run"],
                           rows, [False, True, True, True, False, False]))
        for stage, data in (("pretrain", pre), ("finetune", fin)):
            if not data:
                self.add(_missing(self.results, Path("metrics") / e.name / f"{stage}.json", stage, e.name))
        present = []
        for stage, data, name, caption in (("pretrain", pre, "pretrain_curve.png", "ReLU pretraining"),
                                           ("finetune", fin, "finetune_curve.png", "SNN fine-tuning")):
            if data:
                present += _figures(self.results, [(Path("plots") / e.name / name, caption)], stage, e.name)
        figures = [f for b in present if isinstance(b, Gallery) for f in b.figures]
        self.add(*([Gallery(figures)] if figures else []), *[b for b in present if not isinstance(b, Gallery)])

    def _exact_verdict(self, e: ExperimentInfo, conv: dict) -> tuple[str, list[str]]:
        why = []
        agreement, rel = _num(conv.get("agreement")), _num(conv.get("max_rel_logit_diff"))
        violations = _num(conv.get("causality_violations"))
        if agreement is None or agreement < 1.0:
            why.append(f"agreement {pct(agreement, 4)} %")
        if rel is None or rel > e.rel_tolerance:
            why.append(f"relative logit difference {sci(rel)} > {e.rel_tolerance:g}")
        if violations:
            why.append(f"{integer(violations)} causality violations")
        return ("exact" if not why else "NOT exact"), why

    def conversion(self, e: ExperimentInfo) -> None:
        self.add(Heading(3, f"Conversion exactness ({e.name})"))
        rel_path = Path("metrics") / e.name / "convert.json"
        conv = self.results.metrics(e.name, "convert")
        if not conv:
            self.add(_missing(self.results, rel_path, "convert", e.name))
            return
        working_dtype = e.dtype if e.dtype != "float64" else None
        working = conv.get(working_dtype) if working_dtype and isinstance(conv.get(working_dtype), dict) else None
        cols = ["quantity", "float64 (verified)"] + ([working_dtype] if working else []) + ["required (SPEC 3.4)"]

        def row(label, key, fmt, need):
            return [label, fmt(conv.get(key))] + ([fmt(working.get(key))] if working else []) + [need]

        rows = [
            row("argmax agreement with the ReLU network (%)", "agreement", lambda v: pct(v, 4), "100"),
            row("max \\|logit SNN − logit ReLU\\|", "max_abs_logit_diff", lambda v: sci(v, 2), DASH),
            row("max relative \\|Δ logit\\| (of the logit scale)", "max_rel_logit_diff", lambda v: sci(v, 2),
                f"≤ {e.rel_tolerance:g} (float64), ≤ 1e-4 (float32)"),
            row("causality violations (spikes before their window)", "causality_violations", integer, "0"),
            row("ReLU accuracy (%)", "relu_accuracy", pct, DASH),
            row("SNN accuracy (%)", "snn_accuracy", pct, "= ReLU"),
            row("spikes per neuron", "spikes_per_neuron", fixed, DASH),
            row("latency (τ_c)", "latency", gen, DASH),
            row("clipped input values", "clipped_inputs", integer, DASH),
        ]
        self.add(Table(cols, rows, [False] + [True] * (len(cols) - 2) + [False]))
        verdict, why = self._exact_verdict(e, conv)
        text = f"**Conversion: {verdict}**" + (f" ({'; '.join(why)})" if why else
                                               " — the float64 SNN reproduces the ReLU network on every test sample")
        windows = conv.get("windows")
        if isinstance(windows, list) and windows:
            text += f". Windows Δ per layer (τ_c): {', '.join(gen(w, 3) for w in windows)}"
        self.add(Para(text + "."))
        ev = self.results.metrics(e.name, "evaluate") or {}
        eq = ev.get("equivalent_relu") if isinstance(ev.get("equivalent_relu"), dict) else None
        fin = self.results.metrics(e.name, "finetune") or {}
        if eq or fin.get("equivalent_relu_agreement") is not None:
            agreement = eq.get("agreement") if eq else fin.get("equivalent_relu_agreement")
            rel = eq.get("max_rel_logit_diff") if eq else fin.get("equivalent_relu_max_rel_logit_diff")
            self.add(Para(f"After fine-tuning, the SNN against its own equivalent ReLU network (reverse map, "
                          f"{e.dtype}): agreement {pct(agreement, 4)} %, max relative logit difference {sci(rel, 2)}."))
        self.add(self.run_line(e.name, "convert"))

    def evaluation(self, e: ExperimentInfo) -> None:
        self.add(Heading(3, f"Evaluation ({e.name})"))
        ev = self.results.metrics(e.name, "evaluate")
        if not ev:
            self.add(_missing(self.results, Path("metrics") / e.name / "evaluate.json", "evaluate", e.name))
            return
        self.add(Table(["quantity", "value"], [
            ["ReLU reference accuracy (%)", pct(ev.get("relu_accuracy"))],
            ["SNN accuracy (%)", pct(ev.get("snn_accuracy"))],
            ["SNN − ReLU (pt)", pts(ev.get("delta_accuracy"))],
            ["agreement with the ReLU reference (%)", pct(ev.get("agreement_with_reference"))],
            ["spikes per neuron (hidden layers)", fixed(ev.get("spikes_per_neuron"), 4)],
            ["hidden neurons", integer(ev.get("hidden_neurons"))],
            ["SynOps per sample", big(ev.get("synops_per_sample"))],
            ["MACs per sample (ReLU network)", big(ev.get("macs_per_sample"))],
            ["causality violations", integer(ev.get("causality_violations"))],
            ["clipped input values", integer(ev.get("clipped_inputs"))],
            ["latency to the output (τ_c)", gen(ev.get("latency"))],
            ["test samples", integer(ev.get("test_samples"))],
        ], [False, True]))
        spikes = ev.get("spikes_per_neuron_per_layer") or {}
        synops = ev.get("synops_per_layer") or {}
        layers = sorted(set(spikes) | set(synops), key=_layer_order)
        if layers:
            self.add(Para("Per hidden layer:"),
                     Table(["layer", "spikes per neuron", "SynOps per sample"],
                           [[k.removeprefix("layer"), fixed(spikes.get(k), 4), big(synops.get(k))] for k in layers],
                           [False, True, True]))
        energy = ev.get("energy_pj") or {}
        if energy:
            a = ev.get("energy_assumptions") or {}
            first = ("spike-encoded input (SynOps)" if a.get("first_layer_spiking")
                     else f"non-spiking first layer at {gen(a.get('e_mac_pj'), 3)} pJ per MAC")
            self.add(Para("Energy estimate per sample (SPEC 6):"),
                     Table(["", "energy per sample (pJ)"], [
                         ["SNN", big(energy.get("snn_pj"))],
                         ["ANN (ReLU network)", big(energy.get("ann_pj"))],
                         ["SNN / ANN", fixed(energy.get("ratio"), 4)],
                         ["saving (ANN / SNN)", (gen(energy.get("saving"), 3) + "×") if _num(energy.get("saving"))
                          else DASH],
                     ], [False, True]),
                     Para(f"Assumptions: 45 nm CMOS, compute only (Horowitz, ISSCC 2014): "
                          f"{gen(a.get('e_synop_pj'), 3)} pJ per synaptic operation of the SNN, "
                          f"{gen(a.get('e_mac_pj'), 3)} pJ per MAC of the ANN, {first}; memory access and data "
                          "movement are not counted.", "note"))
        self.add(*_figures(self.results, [
            (Path("plots") / e.name / "spikes_per_layer.png", "spikes per neuron per layer"),
            (Path("plots") / e.name / "spike_times.png", "spike-time distribution"),
            (Path("plots") / e.name / "raster.png", "spike raster"),
        ], "evaluate", e.name))
        self.add(self.run_line(e.name, "evaluate"))

    def sweeps(self, e: ExperimentInfo) -> None:
        self.add(Heading(3, f"Hardware constraints ({e.name})"))
        rel_path = Path("metrics") / e.name / "sweep.json"
        sw = self.results.metrics(e.name, "sweep")
        if not sw:
            if not e.has_sweep_section and not self.results.exists(rel_path):
                self.add(Para(f"Not run: params.yaml has no `experiments.{e.name}.sweep` section. Add one "
                              f"(`sweep: {{}}` takes the default grids) and run {_produce('sweep', e.name)}.",
                              "missing"))
            else:
                self.add(_missing(self.results, rel_path, "sweep", e.name))
            return
        snn, tight = sw.get("snn") or {}, sw.get("tight_windows") or {}
        epochs = sw.get("finetune_epochs")
        self.add(Table(["reference", "accuracy (%)", "spikes per neuron", "latency (τ_c)"], [
            ["exact SNN (unconstrained)", pct(snn.get("accuracy")), fixed(snn.get("spikes_per_neuron")),
             gen(snn.get("latency"))],
            [f"tight windows (quantile {gen(tight.get('quantile'))}, saturation only)", pct(tight.get("accuracy")),
             fixed(tight.get("spikes_per_neuron")), gen(tight.get("latency"))],
        ], [False, True, True, True]))
        self.add(Para(f"Each setting is measured without fine-tuning, then after {integer(epochs)} epoch(s) of "
                      f"fine-tuning under the constraint; Δ is against the exact SNN "
                      f"({pct(snn.get('accuracy'))} %). Jitter: mean ± std over {integer(sw.get('jitter_seeds'))} "
                      "noise seeds.", "note"))
        settings = sw.get("settings") or {}
        best = sw.get("within_tolerance") or {}
        for kind in KINDS:
            rows_raw = sorted((settings.get(kind) or {}).values(), key=lambda r: _num(r.get("value")) or 0.0)
            self.add(Heading(4, f"{SWEEP_TITLE[kind]} ({e.name})"))
            if not rows_raw:
                self.add(Para("No grid values (empty list in the sweep section).", "note"))
            else:
                rows = []
                for r in rows_raw:
                    before, after = r.get("before") or {}, r.get("finetuned") or {}
                    delta = r.get("delta_snn") or {}
                    rows.append([gen(r.get("value")), _acc_cell(before, kind), _acc_cell(after, kind),
                                 pts(delta.get("before_accuracy")), pts(delta.get("finetuned_accuracy")),
                                 fixed((after or before).get("spikes_per_neuron")), gen(r.get("latency")),
                                 (gen(r.get("latency_reduction_vs_snn"), 3) + "×")
                                 if _num(r.get("latency_reduction_vs_snn")) else DASH])
                self.add(Table([SWEEP_VALUE[kind], "accuracy before FT (%)", "accuracy after FT (%)",
                                "Δ before (pt)", "Δ after (pt)", "spikes/neuron", "latency (τ_c)",
                                "latency reduction"], rows, [True] * 8))
            line = PAPER_CONSTRAINTS[kind][0].upper() + PAPER_CONSTRAINTS[kind][1:]
            if kind in best:
                what = {"jitter": "largest σ", "time_steps": "smallest K", "weight_bits": "fewest bits",
                        "latency_factor": "largest factor"}[kind]
                value = best.get(kind)
                line = (f"Ours: {what} within {pts(sw.get('tolerance')).lstrip('+')} pt of the exact SNN after "
                        f"fine-tuning: {gen(value) if value is not None else 'none in the grid'}. " + line)
            self.add(Para(line + ".", "note"))
        self.add(*_figures(self.results, [(Path("plots") / e.name / SWEEP_PLOT[k], SWEEP_TITLE[k].lower())
                                          for k in KINDS], "sweep", e.name))
        self.add(self.run_line(e.name, "sweep"))

    def pareto(self, e: ExperimentInfo) -> None:
        self.add(Heading(3, f"L1 sparsity tuning ({e.name})"))
        metrics_path = Path("metrics") / e.name / "tune.json"
        front_path = Path("plots") / e.name / "pareto.json"
        tune, front_doc = self.results.metrics(e.name, "tune"), self.results.json(front_path)[0]
        if not tune and not front_doc:
            if not e.has_tune_section:
                self.add(Para(f"Not run: params.yaml has no tune section for this experiment. Add `tune: "
                              f"{{{e.name}: {{}}}}` (docs/tuning.md) and run {_produce('tune', e.name)}.", "missing"))
            else:
                self.add(_missing(self.results, metrics_path, "tune", e.name))
            return
        doc = front_doc or {}
        trials = doc.get("trials") or (tune or {}).get("trials") or {}
        front_size = len(doc.get("front") or []) if front_doc else (tune or {}).get("front_size")
        self.add(Para(f"Optuna study {code(doc.get('study_name', '?'))}: {integer(trials.get('complete'))} complete "
                      f"trials of a budget of {integer(trials.get('budget'))} ({integer(trials.get('failed'))} "
                      f"failed, {integer(trials.get('excluded'))} excluded); objectives: validation accuracy (max) "
                      f"and validation spikes per neuron (min). Pareto front: {integer(front_size)} trials."))
        front = doc.get("front") or []
        baseline = doc.get("baseline") or ((tune or {}).get("baseline") and {**tune["baseline"], "number": "?"})
        rows = []
        if baseline:
            rows.append([f"{baseline.get('number', '?')} (baseline)", "0", gen(baseline.get("lr"), 3),
                         pct(baseline.get("val_accuracy")), fixed(baseline.get("val_spikes_per_neuron")),
                         pct(baseline.get("test_accuracy")), fixed(baseline.get("test_spikes_per_neuron"))])
        for r in front:
            if r.get("baseline"):
                continue
            rows.append([str(r.get("number")), sci(r.get("l1"), 2), gen(r.get("lr"), 3), pct(r.get("val_accuracy")),
                         fixed(r.get("val_spikes_per_neuron")), pct(r.get("test_accuracy")),
                         fixed(r.get("test_spikes_per_neuron"))])
        if rows:
            self.add(Table(["trial", "L1 λ", "lr", "val accuracy (%)", "val spikes/neuron", "test accuracy (%)",
                            "test spikes/neuron"], rows, [False] + [True] * 6))
            self.add(Para("The baseline (λ = 0) first, then the Pareto front, sparsest first"
                          + ("" if not front_doc else " (`plots/" + e.name + "/pareto.json`)") + ".", "note"))
        elif not front_doc:
            self.add(_missing(self.results, front_path, "tune", e.name))
        self.add(Para(_target_text(doc.get("target"), tune)))
        figs = _figures(self.results, [(Path("plots") / e.name / "pareto.png", "Pareto front")], "tune", e.name)
        self.add(*figs)
        if self.results.exists(Path("plots") / e.name / "pareto.html"):
            self.add(Para(f"Interactive front: [pareto.html](<plots/{e.name}/pareto.html>) (Optuna/plotly; hover "
                          "shows each trial's params)."))
        self.add(self.run_line(e.name, "tune"))

    # ---- dynamics

    def dynamics(self) -> None:
        self.add(Heading(2, "Learning dynamics"))
        self.add(Para("ReLU, B1 and α1 networks trained in lockstep from one initialisation (SPEC 2.4, 2.7): B1 must "
                      "follow the ReLU trajectory exactly (cosine 1 to its ReLU twin), α1 suffers vanishing or "
                      "exploding Jacobians.", "note"))
        rel = Path("metrics") / "dynamics.json"
        d, _ = self.results.json(rel)
        if not d:
            if not isinstance(self.params.get("dynamics"), Mapping) and not self.results.exists(rel):
                self.add(Para("Not run: params.yaml has no `dynamics` section (needs at least `dataset`; see "
                              f"stages/dynamics.py). Add one and run {_produce('dynamics', None)}.", "missing"))
            else:
                self.add(_missing(self.results, rel, "dynamics", None))
            return
        c = d.get("config") or {}
        dataset = _section(self.params, "dynamics").get("dataset")
        widths = c.get("widths")
        self.add(Para(f"Setup: {'dataset ' + DATASET_LABEL.get(dataset, str(dataset)) + ', ' if dataset else ''}"
                      f"{integer(c.get('depth'))} weight layers of width {integer(c.get('width'))}"
                      + (f" ({' → '.join(str(w) for w in widths)})" if isinstance(widths, list) else "")
                      + f", {integer(c.get('train_samples'))} training and {integer(c.get('test_samples'))} test "
                      f"samples, {integer(c.get('epochs'))} epochs of {c.get('optimizer', 'adam')} at lr "
                      f"{gen(c.get('lr'), 3)}, batch {integer(c.get('batch_size'))}, {c.get('dtype', 'float64')}, "
                      f"seed {c.get('seed', DASH)}."))
        nets = d.get("networks") or {}
        rows = []
        for name, m in nets.items():
            div = m.get("diverged")
            rows.append([DYNAMICS_LABEL.get(name, name), pct(m.get("initial_test_accuracy")),
                         pct(m.get("test_accuracy")), pct(m.get("best_test_accuracy")), _cos(m.get("cosine")),
                         _cos(m.get("min_cosine")),
                         sci(m.get("max_train_loss_gap_to_partner"), 2) if "partner" in m else DASH,
                         (f"{integer(m.get('nonpositive_slopes_init'))} → {integer(m.get('nonpositive_slopes'))}"
                          if "nonpositive_slopes" in m else DASH),
                         f"yes, epoch {gen(m.get('diverged_at_epoch'), 3)}" if div else "no"])
        if rows:
            self.add(Table(["network", "initial acc. (%)", "final acc. (%)", "best acc. (%)", "cosine to twin",
                            "min cosine", "max train-loss gap to twin", "slopes B ≤ 0 (init → end)", "diverged"],
                           rows, [False] + [True] * 7 + [False]))
        spectra = d.get("init_spectra") or {}
        if spectra:
            self.add(Para("Jacobian spectra at initialisation (medians over samples):"),
                     Table(["initialisation", "top singular value of the input-output Jacobian",
                            "spectral radius of the hidden product", "eigenvalues outside the unit circle (%)",
                            "max \\|eigenvalue\\|"],
                           [[INIT_LABEL.get(k, k),
                             gen(s.get("product_top_singular_value"), 3),
                             gen(s.get("square_product_spectral_radius"), 3),
                             pct(s.get("eigenvalues_outside_unit_circle"), 1), gen(s.get("max_abs_eigenvalue"), 3)]
                            for k, s in spectra.items()], [False, True, True, True, True]))
        check = d.get("init_check") or {}
        gaps = check.get("max_rel_logit_diff_to_partner") or {}
        if gaps:
            self.add(Para("At initialisation every SNN computes its twin's function: max relative logit difference "
                          + "; ".join(f"{INIT_LABEL.get(k, k)} {sci(v, 1)}" for k, v in gaps.items()) + "."))
        self.add(*_figures(self.results, [(Path("plots") / "dynamics" / p, p.removesuffix(".png").replace("_", " "))
                                          for p in DYNAMICS_PLOTS], "dynamics", None))
        self.add(Para(f"MLflow run (dynamics): {self.run('dynamics', 'dynamics').text()}", "note"))

    # ---- MLflow

    def mlflow(self) -> None:
        self.add(Heading(2, "MLflow runs"))
        self.add(Para("The run of each stage whose numbers appear above: the latest FINISHED run tagged with the "
                      "stage (`dvc_stage`) and the params hash of params.yaml (`params_hash`). Run ids are looked up "
                      "in the tracking store when the report is built and are the only part of the report that "
                      "depends on it. Open them with `mlflow ui --backend-store-uri sqlite:///mlflow.db` from the "
                      "repository root (or the store in `$MLFLOW_TRACKING_URI`).", "note"))
        if self.runs_problem:
            self.add(Para(f"Run ids: {NA} — {self.runs_problem}.", "missing"))
        rows = []
        for e in self.experiments:
            if not self.has_results(e) and not any(self.run(e.name, s).run_id for s in STAGES):
                continue
            for stage in STAGES:
                if stage == "tune" and not e.has_tune_section and not self.results.exists(
                        Path("metrics") / e.name / "tune.json"):
                    continue
                if stage == "sweep" and not e.has_sweep_section and not self.results.exists(
                        Path("metrics") / e.name / "sweep.json"):
                    continue
                rows.append([code(e.name), stage, self.run(e.name, stage).text()])
        if isinstance(self.params.get("dynamics"), Mapping) or self.results.exists(Path("metrics") / "dynamics.json"):
            rows.append(["dynamics", "dynamics", self.run("dynamics", "dynamics").text()])
        if rows:
            self.add(Table(["experiment", "stage", "run id"], rows))


def _names(names: list[str], not_run: int = 0) -> str:
    """The experiments of a row of the paper table, and how many have no evaluate results."""
    missing = "" if not not_run else ("evaluate not run" if len(names) == 1 else f"{not_run} not evaluated")
    if len(names) <= 3:
        return ", ".join(code(n) for n in names) + (f" ({missing})" if missing else "")
    return f"{code(names[0])} … {code(names[-1])} ({len(names)} experiments" + (f"; {missing})" if missing else ")")


def _layer_order(key: str) -> tuple[int, str]:
    digits = key.removeprefix("layer")
    return (int(digits), key) if digits.isdigit() else (10**9, key)


def _acc_cell(m: Mapping, kind: str) -> str:
    if not m:
        return DASH
    if kind == "jitter" and _num(m.get("accuracy_std")) is not None:
        return f"{pct(m.get('accuracy'))} ± {pct(m.get('accuracy_std'))}"
    return pct(m.get("accuracy"))


def _cos(x: Any) -> str:
    v = _num(x)
    return DASH if v is None else f"{v:.6f}"


def _target_text(target: Mapping | None, tune: Mapping | None) -> str:
    """The target check of pipeline.tuning (pareto.json ``target`` or tune.json ``*_target``) in words."""
    target = target or {}
    goal = _num(target.get("spikes_per_neuron"))
    drop = _num(target.get("accuracy_drop"))
    parts = []
    for split, label in (("val", "validation"), ("test", "test")):
        t = target.get(split)
        if isinstance(t, Mapping):
            pick = t.get("sparsest_within_drop") or {}
        else:
            flat = (tune or {}).get(f"{split}_target")
            if not isinstance(flat, Mapping):
                continue
            t, pick = flat, flat
        parts.append(f"{label}: trial {pick.get('trial', '?')} (λ = {sci(pick.get('l1'), 2)}) reaches "
                     f"{pct(pick.get('accuracy'))} % at {fixed(pick.get('spikes_per_neuron'))} spikes/neuron "
                     f"(best {pct(t.get('best_accuracy'))} %) — target **{'met' if t.get('met') else 'not met'}**")
    if not parts:
        return "Target check: no complete trials."
    head = "Target check: the sparsest front trial within " + (
        f"{100 * drop:g} pt" if drop is not None else "the allowed drop") + " of the best accuracy" + (
        f", target ≤ {goal:g} spikes/neuron" if goal is not None else "") + "; "
    return head + "; ".join(parts) + "."


# -- rendering ----------------------------------------------------------------------------------------

_INLINE = re.compile(r"(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*\s][^*]*\*)|(\[[^\]]+\]\(<?[^)>]+>?\))")


def _inline_html(text: str) -> str:
    out = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()].replace("\\|", "|"), quote=False))
        tok = m.group(0)
        if m.group(1):
            out.append(f"<code>{html.escape(tok[1:-1], quote=False)}</code>")
        elif m.group(2):
            out.append(f"<strong>{_inline_html(tok[2:-2])}</strong>")
        elif m.group(3):
            out.append(f"<em>{_inline_html(tok[1:-1])}</em>")
        else:
            label, href = re.match(r"\[([^\]]+)\]\(<?([^)>]+)>?\)", tok).groups()
            out.append(f'<a href="{html.escape(href)}">{_inline_html(label)}</a>')
        pos = m.end()
    out.append(html.escape(text[pos:].replace("\\|", "|"), quote=False))
    return "".join(out)


def _md_cell(text: str) -> str:
    return re.sub(r"(?<!\\)\|", r"\\|", str(text)).replace("\n", " ")


def _relink(text: str, prefix: str) -> str:
    """Links into the project (``<plots/...>``) relative to the output directory."""
    return re.sub(r"\]\(<((?:plots|metrics)/[^>]+)>\)", lambda m: f"]({prefix}{m.group(1)})", text)


def to_markdown(blocks: list[Block], prefix: str) -> str:
    """``prefix``: the way from the output directory back to the project root, e.g. '../'."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            text = _relink(b.text, prefix)
            out.append(f"> {text}" if b.kind == "missing" else (f"*{text}*" if b.kind == "note" and "*" not in text
                                                                 else text))
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {_relink(i, prefix)}" for i in b.items))
        elif isinstance(b, Table):
            align = b.numeric or [False] * len(b.header)
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                     "|" + "|".join("---:" if a else "---" for a in align) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Gallery):
            out.append("\n".join(f"![{f.caption}]({prefix}{f.path.as_posix()})" for f in b.figures))
    return "\n\n".join(out) + "\n"


_CSS = """
body{font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2328;
margin:0;background:#f6f8fa}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff;box-shadow:0 0 0 1px #d0d7de}
h1{font-size:1.9em;border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.45em;border-bottom:1px solid #d0d7de;padding-bottom:.25em;margin-top:2em}
h3{font-size:1.15em;margin-top:1.6em}h4{font-size:1em;margin-top:1.3em;color:#444}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:13px;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #d0d7de;padding:4px 9px;vertical-align:top}th{background:#f0f3f6;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}tr:nth-child(even) td{background:#fafbfc}
code{font:12.5px SFMono-Regular,Consolas,"Liberation Mono",Menlo,monospace;background:#eff1f3;padding:.1em .3em;
border-radius:4px}
p.missing{background:#fff8c5;border-left:4px solid #d4a72c;padding:6px 10px}
p.note{color:#57606a;font-size:13.5px}
.gallery{display:flex;flex-wrap:wrap;gap:14px;margin:.6em 0 1.2em}
figure{margin:0;max-width:100%}figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{font-size:12.5px;color:#57606a;text-align:center}
a{color:#0969da}
""".strip()


def to_html(blocks: list[Block], root: Path, prefix: str, title: str,
            max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES) -> str:
    """One standalone page: figures inlined as base64 PNG until ``max_inline_bytes``, then linked."""
    root = Path(root)
    inlined = 0
    linked = 0
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f'<h{b.level} id="{html.escape(b.anchor)}">{_inline_html(b.text)}</h{b.level}>')
        elif isinstance(b, Para):
            cls = f' class="{b.kind}"' if b.kind != "text" else ""
            body.append(f"<p{cls}>{_inline_html(_relink(b.text, prefix))}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline_html(_relink(i, prefix))}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            align = b.numeric or [False] * len(b.header)
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.header)
            cell = ('<td class="n">', "<td>")
            rows = "".join("<tr>" + "".join(f"{cell[0] if a else cell[1]}{_inline_html(c)}</td>"
                                            for c, a in zip(r, align, strict=False)) + "</tr>" for r in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Gallery):
            figs = []
            for f in b.figures:
                data = (root / f.path).read_bytes()
                if inlined + len(data) <= max_inline_bytes:
                    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                    inlined += len(data)
                else:
                    src = html.escape(prefix + f.path.as_posix())
                    linked += 1
                figs.append(f'<figure><img src="{src}" alt="{html.escape(f.caption)}">'
                            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
            body.append('<div class="gallery">' + "".join(figs) + "</div>")
    if linked:
        body.insert(1, f'<p class="note">{linked} figure(s) beyond the first {max_inline_bytes // 1_000_000} MB are '
                       f"linked (relative to this file), not embedded.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


# -- entry point --------------------------------------------------------------------------------------

TITLE = "Deep time-to-first-spike networks: reproduction report"


def link_prefix(root: str | Path, out_dir: str | Path) -> str:
    """The way back from ``out_dir`` (absolute, or relative to ``root``) to ``root``: '../' for reports/."""
    root, out = Path(root), Path(out_dir)
    out_abs = out if out.is_absolute() else root / out
    prefix = os.path.relpath(root.resolve(), out_abs.resolve()).replace(os.sep, "/")
    return "" if prefix == "." else prefix + "/"


def run_queries(params: Mapping, results: Results) -> list[RunQuery]:
    """What to look up in MLflow: every stage of every experiment, and the dynamics study."""
    hashes = expected_hashes(params)
    queries = []
    for e in experiments_of(params):
        for stage in STAGES:
            expected = {"params_hash": hashes[(e.name, stage)]} if (e.name, stage) in hashes else {}
            if stage == "tune":
                doc = results.json(Path("plots") / e.name / "pareto.json")[0] or {}
                expected = {"optuna_study": doc["study_name"]} if doc.get("study_name") else {}
            queries.append(RunQuery((e.name, stage), e.name, f"{stage}@{e.name}", STAGE_ROLE[stage], expected))
    dyn = hashes.get(("dynamics", "dynamics"))
    queries.append(RunQuery(("dynamics", "dynamics"), "dynamics", "dynamics", "analysis",
                            {"params_hash": dyn} if dyn else {}))
    return queries


def build_blocks(params: Mapping, root: str | Path, *, tracking_uri: str | None = None,
                 lookup_runs: bool = True) -> tuple[list[Block], list[str]]:
    """(blocks, problems): the document, and the sections that could not be rendered (should be empty)."""
    results = Results(Path(root))
    if lookup_runs:
        runs, problem = find_runs(tracking_uri or default_tracking_uri(Path(root)), run_queries(params, results),
                                  Path(root))
    else:
        runs, problem = {}, "run ids not looked up (--no-mlflow)"
    builder = _Builder(params, results, runs, problem)
    return builder.build(), builder.problems


def build_report(params: Mapping, root: str | Path, *, out_dir: str | Path = "reports",
                 tracking_uri: str | None = None, lookup_runs: bool = True,
                 max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES) -> tuple[str, str]:
    """(markdown, html) of the report for ``params`` (the raw params.yaml mapping) over the files in ``root``.

    ``out_dir`` (relative to ``root``) is where the files will be written: figure paths and links are
    made relative to it. ``tracking_uri``: the MLflow store to read run ids from (default as
    :func:`pipeline.tracking.tracking_uri`: $MLFLOW_TRACKING_URI, else <root>/mlflow.db); with
    ``lookup_runs=False`` or an absent store every run id reads n/a.
    """
    root = Path(root)
    prefix = link_prefix(root, out_dir)
    blocks, _ = build_blocks(params, root, tracking_uri=tracking_uri, lookup_runs=lookup_runs)
    return to_markdown(blocks, prefix), to_html(blocks, root, prefix, TITLE, max_inline_bytes)


__all__ = ["BEST_SINGLE_SPIKE", "PAPER", "PaperResult", "RunRef", "Value", "build_blocks", "build_report",
           "experiments_of", "expected_hashes", "find_runs", "link_prefix", "to_html", "to_markdown"]
