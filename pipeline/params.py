"""params.yaml, typed: one frozen pydantic model for the whole file, validated once before anything runs.

``dvc exp run -S key=1e-05`` writes values that YAML 1.1 loaders read back as strings, and hand-edited
files carry typos; both must fail before the first stage with the offending key path. Numeric strings
are coerced, unknown keys are rejected with the allowed ones listed, NaN and infinities are refused
everywhere. ``params.schema.json`` (``python -m pipeline.params --schema``) lets editors check the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ttfs import zoo
from ttfs.constraints import MAX_TIME_BITS, time_steps_for

from .errors import ParamsError

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "params.schema.json"
DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "places365", "synthetic")
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


# -- scalar types: YAML's strings and DVC's rewrites coerced, bools never taken for numbers ------------


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("not_a_number", "expected a number, not a boolean")
    if isinstance(value, str) and value.strip().lower() in ("null", "none", "~"):
        return None
    return value


def _integer(value: Any) -> Any:
    """'1e1' (a float string DVC may write) is 10; 2.5 stays an error."""
    value = _number(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else value
    return value


Float = Annotated[float, BeforeValidator(_number)]
Int = Annotated[int, BeforeValidator(_integer)]
PositiveFloat = Annotated[Float, Field(gt=0)]
NonNegativeFloat = Annotated[Float, Field(ge=0)]
PositiveInt = Annotated[Int, Field(ge=1)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
Fraction = Annotated[Float, Field(gt=0, le=1)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]


class Section(BaseModel):
    """Every params section: frozen, unknown keys refused with the allowed ones listed, no NaN/inf."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, dict) and cls.model_config.get("extra") == "forbid":
            unknown = sorted(str(k) for k in set(data) - set(cls.model_fields))
            if unknown:
                raise PydanticCustomError("unknown_key", "{key}: unknown key; allowed keys: {allowed}",
                                          {"key": unknown[0], "allowed": ", ".join(cls.model_fields)})
        return data


# -- data --------------------------------------------------------------------------------------------


class SplitParams(Section):
    """The validation split that ``prepare`` holds out of the training images (seeded, stratified):
    every choice the pipeline makes is made on it; no training step sees it."""

    val_size: NonNegativeInt = 5000
    split_seed: Int = 0


class SourceParams(SplitParams):
    """Where to find a real dataset: ``root`` first, then the system copy, then a download."""

    root: str | None = None
    download: bool = True


class Places365Params(SplitParams):
    root: str | None = None
    download: bool = False  # 24 GB: never implicitly
    small: bool = True  # the 256x256 images
    image_size: PositiveInt = 224
    workers: PositiveInt = 4  # threads hashing the images in prepare; DataLoader worker processes when streaming


class SyntheticParams(SplitParams):
    """Seeded images with learnable class structure (tests, smoke runs)."""

    val_size: NonNegativeInt = 32
    train_size: PositiveInt = 512
    test_size: PositiveInt = 256
    shape: tuple[PositiveInt, ...] = (1, 8, 8)
    classes: Annotated[Int, Field(ge=2)] = 4
    noise: NonNegativeFloat = 0.15
    seed: Int = 0


class DatasetsParams(Section):
    """The datasets ``prepare`` makes; a dataset absent here is not prepared."""

    mnist: SourceParams | None = None
    fashion_mnist: SourceParams | None = None
    cifar10: SourceParams | None = None
    cifar100: SourceParams | None = None
    places365: Places365Params | None = None
    synthetic: SyntheticParams | None = None

    @model_validator(mode="before")
    @classmethod
    def _listed_means_present(cls, data: Any) -> Any:
        """``fashion_mnist:`` with nothing under it lists the dataset with default settings."""
        return {k: ({} if v is None else v) for k, v in data.items()} if isinstance(data, dict) else data


class DataParams(Section):
    datasets: DatasetsParams = DatasetsParams()


# -- experiment sections -------------------------------------------------------------------------------


class TrainingParams(Section):
    """What pretraining and fine-tuning share: optimiser, learning-rate schedule, regularisers.

    ``schedule``: ``step`` is the paper's decay (x ``lr_decay`` every ``decay_steps`` steps); ``cosine``
    anneals from ``lr`` to 0 over the run's ``epochs`` (``lr_decay``/``decay_steps`` unused).
    """

    epochs: NonNegativeInt = 10
    batch_size: PositiveInt = 8
    optimizer: Literal["adam", "sgd"] = "adam"
    nesterov: bool = False  # SGD only (momentum 0.9 either way)
    lr: PositiveFloat = 5e-4
    schedule: Literal["step", "cosine"] = "step"
    lr_decay: Fraction = 0.9
    decay_steps: PositiveInt = 5000
    weight_decay: NonNegativeFloat = 0.0
    l1: NonNegativeFloat = 0.0
    augment: Literal["none", "crop_flip"] = "none"  # crop_flip: random shifts of up to crop_padding pixels, mirrors
    crop_padding: NonNegativeInt = 4  # CIFAR's 4 pixels
    nonpositive_bias: bool = False  # hidden biases <= 0 after every step: no spontaneous spikes, fewer spikes
    eval_batch_size: PositiveInt = 1000
    # a run that is not learning fails (outputs kept, MLflow run FAILED): an epoch's training loss above
    # max_loss_factor x ln(classes) (a uniform guess), or training accuracy within chance_margin of chance
    # after chance_epochs epochs (chance_margin null: never)
    max_loss_factor: Annotated[Float, Field(gt=1)] = 10.0
    chance_margin: NonNegativeFloat | None = 0.02
    chance_epochs: PositiveInt = 2

    @model_validator(mode="after")
    def _nesterov_needs_sgd(self) -> TrainingParams:
        if self.nesterov and self.optimizer != "sgd":
            raise PydanticCustomError("range", "nesterov: Nesterov momentum needs optimizer: sgd (got {opt})",
                                      {"opt": self.optimizer})
        return self


class PretrainParams(TrainingParams):
    """ReLU training (SPEC 4); ``checkpoint`` loads given weights (a state_dict file) instead."""

    checkpoint: str | None = None
    checkpoint_sha256: str | None = None


class ConvertParams(Section):
    """Exact conversion and its verification (SPEC 3.4)."""

    zeta: NonNegativeFloat = 0.5
    calibration_samples: PositiveInt | None = None
    batch_size: PositiveInt = 1000
    rel_tolerance: PositiveFloat = 1e-9


class FinetuneParams(TrainingParams):
    """B1 exact-gradient training: of the converted SNN, or of a freshly initialised one (``scratch``)."""

    mode: Literal["converted", "scratch"] = "converted"
    epochs: NonNegativeInt = 1
    kappa: PositiveFloat = 10.0
    adapt_windows: bool = True
    zeta: NonNegativeFloat = 0.5  # initial windows in scratch mode
    calibration_samples: PositiveInt | None = None  # scratch mode


class EvaluateParams(Section):
    batch_size: PositiveInt = 1000
    histogram_bins: PositiveInt = 40
    raster_samples: PositiveInt = 1
    first_layer_spiking: bool = False


def _grid(value: Any) -> Any:
    """A single value is a one-element grid, as ``dvc exp run -S key=4`` writes it."""
    return [value] if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value


class SweepParams(Section):
    """``experiments.<name>.sweep``: the grids (an empty list skips that constraint) and the fine-tuning."""

    jitter: Annotated[tuple[NonNegativeFloat, ...], BeforeValidator(_grid)] = (0.0, 0.01, 0.05, 0.1)
    jitter_seeds: PositiveInt = 3
    jitter_inputs: bool = False  # also jitter the input spikes (the authors' code jitters hidden outputs only)
    # what a time_steps grid value is: K steps per window (K spike times + silence), or a bit-width b as in
    # the authors' code (2^b - 1 steps: 2^b - 1 spike times + silence); ttfs.constraints
    time_levels: Literal["steps", "bits"] = "steps"
    time_steps: Annotated[tuple[Annotated[Int, Field(ge=2)], ...], BeforeValidator(_grid)] = (4, 8, 16, 32)
    weight_bits: Annotated[tuple[Annotated[Int, Field(ge=2, le=32)], ...], BeforeValidator(_grid)] = (2, 3, 4, 8)
    latency_factor: Annotated[tuple[Annotated[Float, Field(ge=1)], ...], BeforeValidator(_grid)] = (
        1.0, 2.0, 4.0, 8.0)
    window_quantile: Fraction = 0.999
    quantile_samples: PositiveInt | None = 10000
    latency_base: Literal["tight", "model"] = "tight"
    weight_percentile: Annotated[Float, Field(gt=0, le=100)] = 100.0
    finetune_epochs: NonNegativeInt = 1
    finetune_lr: PositiveFloat = 1e-4
    # a constraint's own rate instead of finetune_lr, e.g. {weight_bits: 1.0e-5}
    finetune_lr_for: dict[Literal["jitter", "time_steps", "weight_bits", "latency_factor"], PositiveFloat] = {}
    batch_size: PositiveInt = 8
    nonpositive_bias: bool = False  # as in the finetune section: hidden biases stay <= 0 while fine-tuning
    eval_batch_size: PositiveInt = 1000
    train_metrics: bool = False  # also measure on the training set (costs a pass over it per evaluation)
    tolerance: NonNegativeFloat = 0.01  # "within tolerance of the SNN" summary

    @field_validator("jitter", "time_steps", "weight_bits", "latency_factor")
    @classmethod
    def _distinct(cls, values: tuple) -> tuple:
        for i, v in enumerate(values):
            if v in values[:i]:
                raise PydanticCustomError("duplicate", "[{index}]: duplicate grid value {value} (each value once)",
                                          {"index": i, "value": f"{v:g}"})
        return values

    @field_validator("time_steps")
    @classmethod
    def _bit_widths(cls, values: tuple, info: ValidationInfo) -> tuple:
        if info.data.get("time_levels") == "bits":
            for i, v in enumerate(values):
                if v > MAX_TIME_BITS:
                    raise PydanticCustomError(
                        "range", "[{index}]: at most {most} time bits (time_levels: bits), got {value}",
                        {"index": i, "most": MAX_TIME_BITS, "value": v})
        return values

    def grid(self, kind: str) -> tuple:
        return getattr(self, kind)

    def time_steps_for(self, value: int) -> int:
        """Steps K per window of a ``time_steps`` grid value (K itself, or 2^b - 1 for b bits)."""
        return time_steps_for(value, self.time_levels)

    def finetune_params(self, kind: str) -> FinetuneParams:
        """The fine-tuning under constraint ``kind``: the finetune stage's loop with fixed windows, at the
        kind's rate (``finetune_lr_for``, else ``finetune_lr``)."""
        return FinetuneParams(epochs=self.finetune_epochs, batch_size=self.batch_size,
                              lr=self.finetune_lr_for.get(kind, self.finetune_lr),
                              adapt_windows=False, nonpositive_bias=self.nonpositive_bias,
                              eval_batch_size=self.eval_batch_size, chance_margin=None)  # chance is a result here


_IntOrName = Annotated[Int | str, Field(union_mode="left_to_right")]  # "4" is 4, "P" stays a name


class ModelParams(Section):
    """A zoo model: ``name`` plus any keyword its builder accepts (checked against its signature)."""

    model_config = ConfigDict(frozen=True, extra="allow", allow_inf_nan=False)

    name: str

    @model_validator(mode="before")
    @classmethod
    def _builder_keywords(cls, data: Any) -> Any:
        """Keywords of the zoo builder only, each coerced to the type of the builder's default (a tuple
        default takes a list of integers and names, as vgg_fmnist's widths with "P" for a pool)."""
        if not isinstance(data, dict) or "name" not in data:
            return data
        name = data["name"]
        if name not in zoo.list_models():
            raise PydanticCustomError("unknown_model", "name: unknown model '{name}'; one of {models}",
                                      {"name": name, "models": ", ".join(zoo.list_models())})
        defaults = {k: v for k, v in zoo.model_defaults(name).items() if k not in ("in_shape", "num_classes")}
        out = {"name": name}
        for key, value in data.items():
            if key == "name":
                continue
            if key not in defaults:
                raise PydanticCustomError("unknown_key", "{key}: unknown key for model '{name}'; allowed keys: "
                                          "name, {allowed}", {"key": key, "name": name,
                                                              "allowed": ", ".join(defaults)})
            default = defaults[key]
            kind = {bool: bool, int: Int, str: str, tuple: tuple[_IntOrName, ...]}.get(type(default), Float | None)
            try:
                out[key] = TypeAdapter(kind).validate_python(value)
            except ValidationError as e:
                raise PydanticCustomError("model_type", "{key}: {msg}",
                                          {"key": key, "msg": e.errors()[0]["msg"]}) from None
        return out

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})

    def kwargs(self) -> dict[str, Any]:
        return self.options


class ExperimentParams(Section):
    """Every key but ``threads`` is required: dvc.yaml lists each one as a params dependency, and DVC
    refuses missing ones.

    Keys inside the stage sections have defaults (an empty section ``{}`` is valid). ``threads`` is how
    the work runs, not what it computes, so it is no stage's dependency and changes no params hash.
    ``beyond_paper`` is read by the report alone (which depends on all of ``experiments``): true sets the
    experiment beside the paper's results on its dataset in a "Beyond the paper" section.
    """

    dataset: Literal[DATASETS]  # type: ignore[valid-type]
    model: ModelParams
    seed: Int
    device: Device
    dtype: Literal["float32", "float64"]
    pretrain: PretrainParams
    convert: ConvertParams
    finetune: FinetuneParams
    evaluate: EvaluateParams
    sweep: SweepParams
    threads: PositiveInt | None = None  # torch CPU threads (None: pipeline/threads.py policy; TTFS_THREADS wins)
    beyond_paper: bool = False

    @model_validator(mode="after")
    def _bias_constraint_needs_plain_model(self) -> ExperimentParams:
        if self.model.options.get("batch_norm") and self.pretrain.nonpositive_bias:
            raise PydanticCustomError("batch_norm_bias", "pretrain.nonpositive_bias: needs a model without batch "
                                      "norm (its shift is a bias the constraint would miss); set model.batch_norm "
                                      "to false")
        return self


# -- studies -------------------------------------------------------------------------------------------


class TuneParams(Section):
    """One experiment's ``tune`` section (``tune.<experiment>``).

    Training settings not listed here (optimiser, weight decay, lr decay, kappa, adaptive windows, batch
    size, eval batch size and the learning rate when it is not tuned) come from the experiment's
    ``finetune`` section. Every trial starts from ``models/<experiment>/snn_converted.pt``.
    """

    n_trials: PositiveInt = 20  # total over all workers, baseline included
    epochs: PositiveInt = 1
    train_subset: PositiveInt | None = 20000  # None: the whole training split (trials compare on validation)
    l1_min: PositiveFloat = 1e-6
    l1_max: PositiveFloat = 1e-2
    tune_lr: bool = False
    lr_min: PositiveFloat = 1e-5
    lr_max: PositiveFloat = 1e-3
    batch_size: PositiveInt | None = None  # None: finetune.batch_size
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    n_startup_trials: NonNegativeInt = 6  # TPE: random trials before modelling
    seed: Int = 0  # sampler seed (the data split and batch order use the experiment seed)
    target_spikes: NonNegativeFloat = 0.2  # reported: is the target met?
    target_accuracy_drop: NonNegativeFloat = 0.01  # 1 point
    wait_timeout: NonNegativeFloat = 86400.0  # s the exporter waits for others
    heartbeat_interval: PositiveFloat = 30.0
    stale_after: PositiveFloat = 900.0

    @model_validator(mode="after")
    def _ordered_ranges(self) -> TuneParams:
        for lo, hi in (("l1_min", "l1_max"), ("lr_min", "lr_max")):
            if getattr(self, lo) > getattr(self, hi):
                raise PydanticCustomError("range", "{lo}: must be <= {hi} ({a} > {b})",
                                          {"lo": lo, "hi": hi, "a": getattr(self, lo), "b": getattr(self, hi)})
        return self

    def study_identity(self) -> dict:
        """The keys that change what a trial computes (the budget and reporting keys do not)."""
        skip = {"n_trials", "target_spikes", "target_accuracy_drop", "wait_timeout", "heartbeat_interval",
                "stale_after"}
        return self.model_dump(mode="json", exclude=skip)

    def inherited_finetune(self, finetune: FinetuneParams) -> dict:
        """The ``finetune`` keys a trial trains with as written: not those every trial sets itself (its L1,
        its epochs, the learning rate when tuned, the batch size when this section sets one). The study's
        identity holds these alone, so choosing ``finetune.l1`` from the front keeps the study's trials."""
        own = {"l1", "epochs"} | ({"lr"} if self.tune_lr else set()) | ({"batch_size"} if self.batch_size else set())
        return finetune.model_dump(mode="json", exclude=own)


class DynamicsConfig(Section):
    """Settings of the learning-dynamics study, paper Fig. 3 (the ``dynamics`` section without ``dataset``).

    ``depth`` counts weight layers (hidden layers + readout): depth 8 = 7 hidden layers of ``width``.
    ``train_size``/``val_size``/``test_size``: seeded random subsets of the train, val and test splits
    (None = all). Every network (ReLU, B1, alpha1 smart, alpha1 standard) gets its own Adam learning rate:
    the value of ``lr_grid`` with the best ``selection_metric`` on validation after ``selection_epochs`` epochs. It then
    trains for up to ``epochs`` epochs; it stops earlier once its running training accuracy over an epoch
    reaches ``target_train_accuracy`` (None: never), or when its best running training accuracy has not
    risen for ``patience`` epochs (None: never), or on a NaN/inf loss. ``records`` log-spaced epochs (plus
    0 and the last) are evaluated. Windows follow SPEC 2.8 with ``kappa_b1`` (B1) and ``kappa_alpha1``
    (alpha1, thresholds re-expressed so the function is unchanged); alpha1 slopes are projected onto
    B >= ``slope_floor`` after every step. Smart alpha1 init: the Glorot draw's rows re-centred to zero sum
    if ``alpha1_recentre``, then every row sum bounded to [``alpha1_row_sum_min``, ``alpha1_row_sum_max``]
    (hidden neurons by positive homogeneity, the readout by a shift common to all classes).
    ``calibration_samples`` training samples set the initial windows (``zeta``) and alpha1-standard's
    thresholds; ``spectra_samples`` of them are used for the Jacobian spectra. ``threads``: torch CPU
    threads while the study runs (its matrices are small: on a busy machine more threads mostly wait for
    each other).
    """

    depth: Annotated[Int, Field(ge=2)] = 8
    width: PositiveInt = 100
    train_size: PositiveInt | None = 1000
    val_size: PositiveInt | None = 1000
    test_size: PositiveInt | None = 2000
    epochs: NonNegativeInt = 1000
    batch_size: PositiveInt = 50
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: Annotated[Float, Field(ge=0, lt=1)] = 0.0  # SGD only
    lr_grid: Annotated[list[PositiveFloat], Field(min_length=1)] = [1e-3, 1e-4, 1e-5, 1e-6]
    selection_metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    selection_epochs: PositiveInt = 40
    target_train_accuracy: Fraction | None = 1.0
    patience: PositiveInt | None = 100
    records: PositiveInt = 30
    kappa_b1: PositiveFloat = 10.0
    kappa_alpha1: Annotated[Float, Field(ge=1)] = 1.1
    slope_floor: PositiveFloat = 1e-3
    alpha1_recentre: bool = True
    alpha1_row_sum_min: Annotated[Float, Field(lt=0)] = -10.0
    alpha1_row_sum_max: Annotated[Float, Field(gt=0, lt=1)] = 0.99
    zeta: NonNegativeFloat = 0.5
    calibration_samples: Annotated[Int, Field(ge=2)] = 1000
    spectra_samples: PositiveInt = 16
    seed: Int = 0
    device: Device = "cpu"
    threads: PositiveInt | None = 1  # torch CPU threads while it runs (None: torch's default)


class DynamicsParams(DynamicsConfig):
    dataset: Literal[DATASETS]  # type: ignore[valid-type]

    def config(self) -> DynamicsConfig:
        return DynamicsConfig(**self.model_dump(exclude={"dataset"}))


# -- the file ------------------------------------------------------------------------------------------


class Params(Section):
    """The whole of params.yaml. ``x-...`` top-level keys hold YAML anchors and are ignored."""

    data: DataParams = DataParams()
    experiments: dict[str, ExperimentParams] = {}
    tune: dict[str, TuneParams] = {}
    dynamics: DynamicsParams | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_anchors(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not str(k).startswith("x-")}
        return data

    @model_validator(mode="after")
    def _references_resolve(self) -> Params:
        listed = self.datasets
        for name, exp in self.experiments.items():
            if not NAME.fullmatch(name):
                raise PydanticCustomError("name", "experiments: '{name}' is not a valid experiment name; "
                                          "names start with a letter and use letters, digits and '_' only",
                                          {"name": name})
            if exp.dataset not in listed:
                raise PydanticCustomError("unlisted", "experiments.{name}.dataset: '{ds}' is not listed under "
                                          "data.datasets (listed: {listed}); add it there so it is prepared",
                                          {"name": name, "ds": exp.dataset, "listed": ", ".join(listed) or "none"})
        for name in self.tune:
            if name not in self.experiments:
                raise PydanticCustomError("unknown_experiment", "tune.{name}: no experiment '{name}' under "
                                          "experiments (defined: {defined})",
                                          {"name": name, "defined": ", ".join(self.experiments) or "none"})
        if self.dynamics is not None and self.dynamics.dataset not in listed:
            raise PydanticCustomError("unlisted", "dynamics.dataset: '{ds}' is not listed under data.datasets "
                                      "(listed: {listed}); add it there so it is prepared",
                                      {"ds": self.dynamics.dataset, "listed": ", ".join(listed) or "none"})
        return self

    @property
    def datasets(self) -> dict[str, Section]:
        sections = self.data.datasets
        return {name: getattr(sections, name) for name in DATASETS if getattr(sections, name) is not None}

    def experiment(self, name: str) -> ExperimentParams:
        if name not in self.experiments:
            raise ParamsError(f"experiments: no experiment {name!r}; defined: {', '.join(self.experiments)}")
        return self.experiments[name]

    def dataset(self, name: str) -> Section:
        if name not in self.datasets:
            raise ParamsError(f"data.datasets: no dataset {name!r}; defined: {', '.join(self.datasets)}")
        return self.datasets[name]

    def tuning(self, name: str) -> TuneParams:
        if name not in self.tune:
            tuned = ", ".join(self.tune) or "none"
            raise ParamsError(f"tune: no section for experiment {name!r}; tuned: {tuned}")
        return self.tune[name]


# -- loading -------------------------------------------------------------------------------------------


def _message(error: dict) -> str:
    """One pydantic error as '<full.key.path>: <what is wrong>, got <value>'."""
    loc = [str(part) for part in error["loc"]]
    kind, msg = error["type"], error["msg"]
    if kind in ("unknown_key", "unknown_model", "model_type", "batch_norm_bias", "range", "duplicate"):
        head, _, msg = msg.partition(": ")
        loc.append(head) if not head.startswith("[") else loc.__setitem__(-1, loc[-1] + head)
    elif kind in ("name", "unlisted", "unknown_experiment"):
        head, _, msg = msg.partition(": ")
        loc = [head]
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "literal_error":
        msg = "expected one of " + ", ".join(map(str, error["ctx"]["expected"].replace("'", "").split(" or ")))
    elif kind == "string_pattern_mismatch" and loc[-1] == "device":
        msg = "expected auto, cpu, cuda or cuda:N"
    path = ".".join(p if not p.isdigit() else f"[{p}]" for p in loc).replace(".[", "[")
    got = "" if kind in ("missing", "unknown_key", "name", "unlisted", "unknown_experiment", "range") else (
        f", got {error['input']!r}" if "input" in error and not isinstance(error["input"], dict) else "")
    return f"{path}: {msg[0].lower() + msg[1:]}{got}"


def parse(raw: Any) -> Params:
    """Validate the whole params mapping (as loaded from params.yaml); ParamsError names the key path."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: expected a mapping at the top level, got {raw!r}")
    unknown = sorted(str(k) for k in set(raw) - set(Params.model_fields) if not str(k).startswith("x-"))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown top-level section; allowed: {', '.join(Params.model_fields)} "
                          "(and x-... keys holding YAML anchors)")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_message(e.errors()[0])) from None


def load(path: str | Path = "params.yaml") -> Params:
    """The one way to read params.yaml: every stage, the report and the tests come through here."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no params file (run from the project root, where params.yaml is)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    return parse(raw or {})


def as_dict(obj: Any) -> Any:
    """Plain JSON-able form of params (models dumped, model options next to the name)."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite value {obj} in params")
    return obj


def params_hash(*parts: Any) -> str:
    """Short stable hash of params (and input checksums): identifies runs and checkpoints."""
    text = json.dumps([as_dict(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the shape MLflow params want."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def resolve_device(spec: str, path: str = "device", local_rank: int | None = None):
    """``auto`` is CUDA when available; an explicit ``cuda`` without one is an error, not a silent CPU run.

    ``local_rank`` (a torchrun process): ``auto`` and ``cuda`` become ``cuda:<local_rank>``, one GPU per
    process; a node with fewer GPUs than processes is an error.
    """
    import torch

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ParamsError(f"{path}: {spec!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    if spec == "cuda" and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise ParamsError(f"{path}: torchrun process {local_rank} needs its own GPU but this node has "
                              f"{torch.cuda.device_count()}; start at most that many processes per node "
                              "(--nproc_per_node) or use device: cpu")
        spec = f"cuda:{local_rank}"
    return torch.device(spec)


def json_schema() -> str:
    """The JSON Schema of params.yaml, as committed in params.schema.json."""
    schema = Params.model_json_schema()
    schema["title"] = "ttfs pipeline params.yaml"
    schema["patternProperties"] = {"^x-": {"description": "YAML anchors, ignored"}}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.params", description="Validate params or write the schema.")
    ap.add_argument("files", nargs="*", default=["params.yaml"], help="params files to validate")
    ap.add_argument("--schema", action="store_true", help=f"write {SCHEMA_FILE.name} and exit")
    args = ap.parse_args(argv)
    if args.schema:
        SCHEMA_FILE.write_text(json_schema())
        print(f"wrote {SCHEMA_FILE}")
        return 0
    for file in args.files:
        try:
            params = load(file)
        except ParamsError as e:
            print(f"{file}: invalid params: {e}")
            return 2
        print(f"{file}: valid ({len(params.experiments)} experiments, {len(params.tune)} tuned)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
