"""Typed, validated view of params.yaml: one frozen dataclass per section, errors name the full key.

``dvc exp run -S key=1e-05`` writes values that YAML 1.1 loaders read back as strings, and hand-edited
files carry typos; both must fail early with the offending key path, never half-way through training.
Numeric strings are coerced, unknown keys are rejected with the allowed ones listed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ttfs import zoo

from .errors import ParamsError

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "places365", "synthetic")




# -- sections ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceParams:
    """Where to find a real dataset: ``root`` first, then the system copy, then a download."""

    root: str | None = None
    download: bool = True


@dataclass(frozen=True)
class Places365Params:
    root: str | None = None
    download: bool = False  # 24 GB: never implicitly
    small: bool = True  # the 256x256 images
    image_size: int = field(default=224, metadata={"min": 1})


@dataclass(frozen=True)
class SyntheticParams:
    """Seeded images with learnable class structure (tests, smoke runs)."""

    train_size: int = field(default=512, metadata={"min": 1})
    test_size: int = field(default=256, metadata={"min": 1})
    shape: tuple[int, ...] = (1, 8, 8)
    classes: int = field(default=4, metadata={"min": 2})
    noise: float = field(default=0.15, metadata={"min": 0.0})
    seed: int = 0


DATASET_PARAMS = {name: SourceParams for name in DATASETS} | {
    "places365": Places365Params,
    "synthetic": SyntheticParams,
}


@dataclass(frozen=True)
class PretrainParams:
    """ReLU training (SPEC 4); ``checkpoint`` loads given weights (a state_dict file) instead."""

    epochs: int = field(default=10, metadata={"min": 0})
    batch_size: int = field(default=8, metadata={"min": 1})
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = field(default=5e-4, metadata={"gt": 0.0})
    lr_decay: float = field(default=0.9, metadata={"gt": 0.0, "max": 1.0})
    decay_steps: int = field(default=5000, metadata={"min": 1})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    l1: float = field(default=0.0, metadata={"min": 0.0})
    augment: Literal["none", "crop_flip"] = "none"  # crop_flip: CIFAR's 4-pixel shifts and mirror images
    nonpositive_bias: bool = False  # hidden biases <= 0 after every step: no spontaneous spikes, fewer spikes
    eval_batch_size: int = field(default=1000, metadata={"min": 1})
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None


@dataclass(frozen=True)
class ConvertParams:
    """Exact conversion and its verification (SPEC 3.4)."""

    zeta: float = field(default=0.5, metadata={"min": 0.0})
    calibration_samples: int | None = field(default=None, metadata={"min": 1})
    batch_size: int = field(default=1000, metadata={"min": 1})
    rel_tolerance: float = field(default=1e-9, metadata={"gt": 0.0})


@dataclass(frozen=True)
class FinetuneParams:
    """B1 exact-gradient training: of the converted SNN, or of a freshly initialised one (``scratch``)."""

    mode: Literal["converted", "scratch"] = "converted"
    epochs: int = field(default=1, metadata={"min": 0})
    batch_size: int = field(default=8, metadata={"min": 1})
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = field(default=5e-4, metadata={"gt": 0.0})
    lr_decay: float = field(default=0.9, metadata={"gt": 0.0, "max": 1.0})
    decay_steps: int = field(default=5000, metadata={"min": 1})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    l1: float = field(default=0.0, metadata={"min": 0.0})
    augment: Literal["none", "crop_flip"] = "none"
    nonpositive_bias: bool = False
    kappa: float = field(default=10.0, metadata={"gt": 0.0})
    adapt_windows: bool = True
    zeta: float = field(default=0.5, metadata={"min": 0.0})  # initial windows in scratch mode
    calibration_samples: int | None = field(default=None, metadata={"min": 1})  # scratch mode
    eval_batch_size: int = field(default=1000, metadata={"min": 1})


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = field(default=1000, metadata={"min": 1})
    histogram_bins: int = field(default=40, metadata={"min": 1})
    raster_samples: int = field(default=1, metadata={"min": 1})
    first_layer_spiking: bool = False


@dataclass(frozen=True)
class ModelParams:
    """A zoo model: ``name`` plus any keyword its builder accepts (checked against its signature)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class ExperimentParams:
    """Every key is required: dvc.yaml lists each one as a params dependency, and DVC refuses missing ones.

    Keys inside the stage sections have defaults (an empty section ``{}`` is valid).
    """

    dataset: str
    model: ModelParams
    seed: int
    device: str  # auto | cpu | cuda | cuda:N
    dtype: Literal["float32", "float64"]
    pretrain: PretrainParams
    convert: ConvertParams
    finetune: FinetuneParams
    evaluate: EvaluateParams
    sweep: Any  # pipeline.sweeps.SweepParams after parse() (that module imports this one)


@dataclass(frozen=True)
class Params:
    datasets: dict[str, Any]
    experiments: dict[str, ExperimentParams]

    def experiment(self, name: str) -> ExperimentParams:
        if name not in self.experiments:
            raise ParamsError(f"experiments: no experiment {name!r}; defined: {', '.join(self.experiments)}")
        return self.experiments[name]

    def dataset(self, name: str):
        if name not in self.datasets:
            raise ParamsError(f"data.datasets: no dataset {name!r}; defined: {', '.join(self.datasets)}")
        return self.datasets[name]


# -- coercion ----------------------------------------------------------------------------------------

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if not isinstance(value, str) else repr(value)


def _to_float(value: Any, path: str) -> float:
    if isinstance(value, bool):
        raise ParamsError(f"{path}: expected a float, got {_describe(value)}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    raise ParamsError(f"{path}: expected a float, got {_describe(value)}")


def _to_int(value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise ParamsError(f"{path}: expected an integer, got {_describe(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, (float, str)):
        try:
            number = float(value) if isinstance(value, float) else _to_float(value, path)
        except ParamsError:
            number = None
        if number is not None and number.is_integer():
            return int(number)
    raise ParamsError(f"{path}: expected an integer, got {_describe(value)}")


def _to_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ParamsError(f"{path}: expected true or false, got {_describe(value)}")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~")):
            if type(None) in options:
                return None
            raise ParamsError(f"{path}: must be set")
        (inner,) = [t for t in options if t is not type(None)]
        return _coerce(inner, value, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ParamsError(f"{path}: expected one of {', '.join(map(str, choices))}, got {_describe(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{path}: expected a list, got {_describe(value)}")
        return tuple(_to_int(v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{path}: expected a mapping, got {_describe(value)}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is float:
        return _to_float(value, path)
    if tp is int:
        return _to_int(value, path)
    if tp is bool:
        return _to_bool(value, path)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{path}: expected a string, got {_describe(value)}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


def _check_range(value: Any, meta: dict, path: str) -> None:
    if value is None or not meta:
        return
    if "min" in meta and value < meta["min"]:
        raise ParamsError(f"{path}: must be >= {meta['min']}, got {value}")
    if "gt" in meta and not value > meta["gt"]:
        raise ParamsError(f"{path}: must be > {meta['gt']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise ParamsError(f"{path}: must be <= {meta['max']}, got {value}")


def _build(cls: type, data: Any, path: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(f"{path}.{unknown[0]}: unknown key; allowed keys: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{path}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamsError(f"{key}: required key is missing")
            continue
        values[name] = _coerce(hints[name], data[name], key)
        _check_range(values[name], dict(f.metadata), key)
    return cls(**values)


def _model(data: Any, path: str) -> ModelParams:
    """The model section: ``name`` plus builder keywords, coerced to the types of the builder's defaults."""
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping with a 'name', got {_describe(data)}")
    if "name" not in data:
        raise ParamsError(f"{path}.name: required key is missing; one of {', '.join(zoo.list_models())}")
    name = data["name"]
    if name not in zoo.list_models():
        raise ParamsError(f"{path}.name: unknown model {name!r}; one of {', '.join(zoo.list_models())}")
    defaults = {k: v for k, v in zoo.model_defaults(name).items() if k not in ("in_shape", "num_classes")}
    options = {}
    for key, value in data.items():
        if key == "name":
            continue
        if key not in defaults:
            raise ParamsError(f"{path}.{key}: unknown key for model {name!r}; allowed keys: "
                              f"name, {', '.join(defaults)}")
        default = defaults[key]
        if isinstance(default, bool):
            tp: Any = bool
        elif isinstance(default, (int, float)) or default is None:
            tp = float | None if default is None or isinstance(default, float) else int
        else:
            tp = str
        options[key] = _coerce(tp, value, f"{path}.{key}")
    return ModelParams(name, options)


def _device(value: str, path: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ParamsError(f"{path}: expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def parse(raw: Any) -> Params:
    """Validate the whole params mapping (as loaded from params.yaml)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: expected a mapping at the top level, got {_describe(raw)}")
    # tune and dynamics are read and validated by their own stages (pipeline/tuning.py, pipeline/dynamics.py)
    unknown = sorted(k for k in set(raw) - {"data", "experiments", "tune", "dynamics"} if not str(k).startswith("x-"))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown top-level section; allowed: data, experiments, tune, dynamics "
                          "(and x-... keys holding YAML anchors)")
    data = raw.get("data") or {}
    if not isinstance(data, dict) or set(data) - {"datasets"}:
        extra = sorted(set(data) - {"datasets"}) if isinstance(data, dict) else []
        raise ParamsError(f"data.{extra[0]}: unknown key; allowed keys: datasets" if extra
                          else f"data: expected a mapping, got {_describe(data)}")
    datasets_raw = data.get("datasets") or {}
    if not isinstance(datasets_raw, dict):
        raise ParamsError(f"data.datasets: expected a mapping of dataset names, got {_describe(datasets_raw)}")
    datasets = {}
    for name, section in datasets_raw.items():
        if name not in DATASET_PARAMS:
            raise ParamsError(f"data.datasets.{name}: unknown dataset; one of {', '.join(DATASETS)}")
        datasets[name] = _build(DATASET_PARAMS[name], section, f"data.datasets.{name}")
    experiments_raw = raw.get("experiments") or {}
    if not isinstance(experiments_raw, dict):
        raise ParamsError(f"experiments: expected a mapping of experiment names, got {_describe(experiments_raw)}")
    experiments = {}
    for name, section in experiments_raw.items():
        path = f"experiments.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
            raise ParamsError(f"{path}: experiment names may use letters, digits, '_', '-' and '.' only")
        if not isinstance(section, dict):
            raise ParamsError(f"{path}: expected a mapping, got {_describe(section)}")
        if "model" not in section:
            raise ParamsError(f"{path}.model: required key is missing")
        model = _model(section["model"], f"{path}.model")
        exp = _build(ExperimentParams, {**section, "model": {"name": model.name}}, path)
        from .sweeps import parse_sweep  # here, not at the top: pipeline.sweeps imports this module

        exp = dataclasses.replace(exp, model=model, device=_device(exp.device, f"{path}.device"),
                                  sweep=parse_sweep(exp.sweep, f"{path}.sweep"))
        if exp.model.options.get("batch_norm") and exp.pretrain.nonpositive_bias:
            raise ParamsError(f"{path}.pretrain.nonpositive_bias: needs a model without batch norm (its shift is "
                              f"a bias the constraint would miss); set {path}.model.batch_norm to false")
        if exp.dataset not in datasets:
            raise ParamsError(f"{path}.dataset: {exp.dataset!r} is not listed under data.datasets "
                              f"(listed: {', '.join(datasets) or 'none'}); add it there so it is prepared")
        experiments[name] = exp
    return Params(datasets, experiments)


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no params file (run from the project root)")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ParamsError(f"{path}: not valid YAML: {e}") from e
    return parse(raw or {})


def as_dict(obj: Any) -> Any:
    """Plain JSON-able form of a params dataclass (model options flattened next to the name)."""
    if isinstance(obj, ModelParams):
        return {"name": obj.name, **obj.options}
    if dataclasses.is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [as_dict(v) for v in obj]
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


def resolve_device(spec: str, path: str = "device"):
    """``auto`` is CUDA when available; an explicit ``cuda`` without one is an error, not a silent CPU run."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ParamsError(f"{path}: {spec!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(spec)
