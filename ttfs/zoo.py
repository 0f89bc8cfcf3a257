"""Model zoo: a timm-style registry of the ReLU architectures of SPEC 7.

Every model is a :class:`torch.nn.Sequential`. The chains (FC, LeNet5, VGG) hold ``Linear``, ``Conv2d``,
``BatchNorm1d/2d``, ``ReLU``, ``MaxPool2d``, ``Flatten`` and ``Dropout`` only; the ResNets (``resnet20``,
``resnet18_cifar``, ``resnet_small``) hold :class:`BasicBlock` or :class:`Bottleneck` modules with their
own forward (skip connections) and global average pooling. :func:`ttfs.convert` accepts all of them as
they are (the ResNets through torch.fx, with delayed input groups).
Weights are Glorot (Xavier) uniform, biases zero (SPEC 4); batch norm starts at the identity
(gamma = 1, beta = 0, running mean 0, running variance 1).

    >>> from ttfs.zoo import create_model, list_models
    >>> list_models()  # doctest: +NORMALIZE_WHITESPACE
    ['fc16', 'fc2', 'lenet5', 'resnet18_cifar', 'resnet20', 'resnet_small', 'vgg16', 'vgg16_mnist',
     'vgg16_places365', 'vgg_fmnist']
    >>> model = create_model("lenet5", batch_norm=True, dropout=0.1)

Common keyword arguments (every model): ``in_shape`` = (C, H, W) of one input (a per-model default),
``num_classes`` (default 10, 365 for PLACES365), ``batch_norm`` (bool) and ``dropout`` (a rate;
where it goes is stated per model). The VGGs take ``width_multiplier`` (scales every hidden width,
conv channels and dense layers, never the number of classes; at least 1 unit per layer) and
``bn_position`` ("after": conv -> ReLU -> BN as in the public pretrained CIFAR VGG16, whose batch
norm the converter folds into the next layer; "before": conv -> BN -> ReLU). Flatten sizes are
computed from ``in_shape``. The ResNets take ``width_multiplier`` and ``block`` ("basic" or "bottleneck");
their ``batch_norm`` (default True) puts BN before each ReLU and on projection shortcuts, and
``dropout`` goes before the readout. The built model carries its resolved arguments in ``model.config``.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import nn

__all__ = ["UnknownModelError", "create_model", "list_models", "model_defaults", "register_model"]

_MODELS: dict[str, Callable[..., nn.Sequential]] = {}


class UnknownModelError(KeyError, ValueError):
    """A model name that is not registered (catchable as KeyError or ValueError)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def register_model(fn: Callable[..., nn.Sequential] | None = None, *, name: str | None = None):
    """Decorator registering a model builder under ``name`` (default: the function's name).

    Usable bare (``@register_model``) or with a name (``@register_model(name="x")``). Builders take
    keyword arguments only and return an ``nn.Sequential``. Registering a taken name is an error.
    """

    def decorate(builder: Callable[..., nn.Sequential]) -> Callable[..., nn.Sequential]:
        key = name or builder.__name__
        if key in _MODELS and _MODELS[key] is not builder:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = builder
        return builder

    return decorate(fn) if fn is not None else decorate


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style ``pattern``."""
    names = sorted(_MODELS)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _builder(name: str) -> Callable[..., nn.Sequential]:
    try:
        return _MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())}"
        ) from None


def model_defaults(name: str) -> dict:
    """The keyword arguments ``name`` accepts, with their defaults."""
    params = inspect.signature(_builder(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}


def create_model(name: str, **kwargs) -> nn.Sequential:
    """Build the registered model ``name``; unknown names raise :class:`UnknownModelError`
    (a KeyError and ValueError), unknown keyword arguments a TypeError naming them."""
    builder = _builder(name)
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(
                f"model {name!r} got unknown keyword argument(s) {', '.join(map(repr, unknown))}; "
                f"it accepts {', '.join(params)}"
            )
    model = builder(**kwargs)
    config = model_defaults(name)
    config.update(kwargs)
    config.update(getattr(model, "config", {}))  # resolved values (in_shape as a tuple)
    model.config = {"name": name, **config}
    return model


# -- building blocks ---------------------------------------------------------------------------------


def _init(model: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases for every Linear/Conv2d (SPEC 4)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _shape(in_shape: int | Sequence[int], dims: int | None = None) -> tuple[int, ...]:
    shape = (int(in_shape),) if isinstance(in_shape, int) else tuple(int(s) for s in in_shape)
    if not shape or any(s < 1 for s in shape) or (dims is not None and len(shape) != dims):
        want = "a positive shape" if dims is None else f"{dims} positive sizes (C, H, W)"
        raise ValueError(f"in_shape must be {want}, got {in_shape!r}")
    return shape


def _check(num_classes: int, dropout: float | None) -> None:
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if dropout is not None and not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be a rate in [0, 1), got {dropout}")


def _width(channels: int, multiplier: float) -> int:
    if not multiplier > 0:
        raise ValueError(f"width_multiplier must be positive, got {multiplier}")
    return max(1, int(round(channels * multiplier)))


def _dropout(rate: float | None) -> list[nn.Module]:
    return [nn.Dropout(float(rate))] if rate else []


def _dense_block(features: int, width: int, batch_norm: bool, bn_after: bool, rate: float | None) -> list:
    bn = [nn.BatchNorm1d(width)] if batch_norm else []
    if bn_after:
        return [nn.Linear(features, width), nn.ReLU(), *bn, *_dropout(rate)]
    return [nn.Linear(features, width), *bn, nn.ReLU(), *_dropout(rate)]


def _mlp(in_shape, num_classes: int, widths: Sequence[int], batch_norm: bool,
         dropout: float) -> nn.Sequential:
    shape = _shape(in_shape)
    _check(num_classes, dropout)
    if any(int(w) < 1 for w in widths):
        raise ValueError(f"hidden widths must be >= 1, got {list(widths)}")
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(shape)
    for width in widths:
        layers += _dense_block(features, int(width), batch_norm, False, dropout)
        features = int(width)
    layers.append(nn.Linear(features, int(num_classes)))
    model = _init(nn.Sequential(*layers))
    model.config = {"in_shape": shape}
    return model


# -- fully connected ---------------------------------------------------------------------------------


@register_model
def fc2(*, in_shape=(1, 28, 28), num_classes: int = 10, width: int = 340, batch_norm: bool = False,
        dropout: float = 0.0) -> nn.Sequential:
    """FC2: flatten -> dense ``width`` (340) -> classes. BN (optional) before the ReLU, dropout after it."""
    return _mlp(in_shape, num_classes, [width], batch_norm, dropout)


@register_model
def fc16(*, in_shape=(1, 28, 28), num_classes: int = 10, depth: int = 15, width: int = 340,
         batch_norm: bool = False, dropout: float = 0.0) -> nn.Sequential:
    """FC16: flatten -> ``depth`` (15) hidden dense layers of ``width`` (340) -> classes.

    BN (optional) before each ReLU, dropout after it.
    """
    if int(depth) < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return _mlp(in_shape, num_classes, [width] * int(depth), batch_norm, dropout)


# -- LeNet5 ------------------------------------------------------------------------------------------


def _after(size: tuple[int, int], what: str, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    out = tuple((s + 2 * padding - kernel) // stride + 1 for s in size)
    if min(out) < 1:
        raise ValueError(f"in_shape too small: the spatial size {size} vanishes at {what}")
    return out


@register_model
def lenet5(*, in_shape=(1, 28, 28), num_classes: int = 10, batch_norm: bool = False,
           dropout: float = 0.0) -> nn.Sequential:
    """LeNet5: conv 6@5x5 'same' -> pool 2 -> conv 16@5x5 -> pool 2 -> conv 120@5x5 -> dense 84 -> classes.

    Each hidden layer is (conv|dense) -> [BN] -> ReLU (-> pool), followed by dropout when
    ``dropout`` > 0. On 28x28 inputs the last conv is 1x1 (flatten = 120).
    """
    c, h, w = _shape(in_shape, 3)
    _check(num_classes, dropout)
    bn2 = (lambda n: [nn.BatchNorm2d(n)]) if batch_norm else (lambda n: [])
    size = (h, w)
    layers: list[nn.Module] = []
    for i, (c_in, c_out, pad, pool) in enumerate([(c, 6, 2, True), (6, 16, 0, True), (16, 120, 0, False)]):
        size = _after(size, f"conv {i + 1}", 5, 1, pad)
        layers += [nn.Conv2d(c_in, c_out, 5, padding=pad), *bn2(c_out), nn.ReLU()]
        if pool:
            size = _after(size, f"pool {i + 1}", 2, 2, 0)
            layers.append(nn.MaxPool2d(2))
        layers += _dropout(dropout)
    layers.append(nn.Flatten())
    layers += _dense_block(120 * size[0] * size[1], 84, batch_norm, False, dropout)
    layers.append(nn.Linear(84, int(num_classes)))
    model = _init(nn.Sequential(*layers))
    model.config = {"in_shape": (c, h, w)}
    return model


# -- VGG16 -------------------------------------------------------------------------------------------

_VGG16 = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P")
_VGG16_MNIST = (64, 64, 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P")


def _vgg(cfg, in_shape, dense: Sequence[int], num_classes: int, batch_norm: bool, bn_position: str,
         conv_dropout: Sequence[float | None], flat_dropout: float | None, dense_dropout: float | None,
         width_multiplier: float, dense_batch_norm: bool | None = None) -> nn.Sequential:
    """conv 3x3 'same' blocks (``cfg``, "P" = max-pool 2), flatten, hidden dense layers, output.

    ``conv_dropout[i]`` is the dropout after the i-th conv (None: none); ``flat_dropout`` the one
    before flatten, ``dense_dropout`` the one after each hidden dense layer. ``dense_batch_norm``
    (None: ``batch_norm``) puts BN on the hidden dense layers.
    """
    c, h, w = _shape(in_shape, 3)
    _check(num_classes, dense_dropout)
    if bn_position not in ("after", "before"):
        raise ValueError(f"bn_position must be 'after' (conv -> ReLU -> BN) or 'before', got {bn_position!r}")
    after = bn_position == "after"
    size = (h, w)
    layers: list[nn.Module] = []
    conv_index = 0
    for i, item in enumerate(cfg):
        if item == "P":
            size = _after(size, f"pool after layer {i}", 2, 2, 0)
            layers.append(nn.MaxPool2d(2))
            continue
        width = _width(item, width_multiplier)
        bn = [nn.BatchNorm2d(width)] if batch_norm else []
        conv = nn.Conv2d(c, width, 3, padding=1)
        layers += [conv, nn.ReLU(), *bn] if after else [conv, *bn, nn.ReLU()]
        layers += _dropout(conv_dropout[conv_index])
        conv_index += 1
        c = width
    layers += [*_dropout(flat_dropout), nn.Flatten()]
    features = c * size[0] * size[1]
    dense_bn = batch_norm if dense_batch_norm is None else dense_batch_norm
    for units in dense:
        width = _width(units, width_multiplier)
        layers += _dense_block(features, width, dense_bn, after, dense_dropout)
        features = width
    layers.append(nn.Linear(features, int(num_classes)))
    model = _init(nn.Sequential(*layers))
    model.config = {"in_shape": _shape(in_shape, 3)}
    return model


def _block_dropout(cfg, first: float | None, rest: float | None) -> list[float | None]:
    """Dropout after every conv that is not followed by a pool: ``first`` after conv 1, ``rest`` after
    the others (the pattern of the public pretrained CIFAR VGG16)."""
    convs = [i for i, item in enumerate(cfg) if item != "P"]
    rates: list[float | None] = []
    for k, i in enumerate(convs):
        before_pool = i + 1 < len(cfg) and cfg[i + 1] == "P"
        rates.append(None if before_pool else (first if k == 0 else rest))
    return rates


@register_model
def vgg16(*, in_shape=(3, 32, 32), num_classes: int = 10, batch_norm: bool = True,
          dropout: float | None = None, width_multiplier: float = 1.0,
          bn_position: str = "after") -> nn.Sequential:
    """VGG16 for CIFAR (32x32): conv [64, 64, P, 128, 128, P, 256x3, P, 512x3, P, 512x3, P], dense 512,
    classes.

    As in the public pretrained CIFAR VGG16 the paper fine-tunes: every conv is conv -> ReLU -> BN ->
    dropout (no dropout before a pool), then dropout -> flatten -> dense 512 -> ReLU -> BN -> dropout
    -> output. ``dropout=None`` uses that model's rates (0.3 after conv 1, 0.4 after the other convs,
    0.5 around the dense layer); a float uses one rate at the same places; 0 removes dropout. (That
    model was trained in Keras, whose batch norm uses eps = 1e-3; set ``eps`` when loading it.)
    """
    _check(num_classes, dropout)
    first, rest, dense = (0.3, 0.4, 0.5) if dropout is None else (dropout, dropout, dropout)
    return _vgg(_VGG16, in_shape, [512], num_classes, batch_norm, bn_position,
                _block_dropout(_VGG16, first, rest), dense, dense, width_multiplier)


@register_model
def vgg16_mnist(*, in_shape=(1, 28, 28), num_classes: int = 10, batch_norm: bool = False,
                dropout: float = 0.0, width_multiplier: float = 1.0,
                bn_position: str = "after") -> nn.Sequential:
    """VGG16 for MNIST/fMNIST (28x28): conv [64, 64, 128, 128, P, 256x3, P, 512x3, P, 512x3, P], dense 512,
    512, classes.

    Spatial sizes on 28x28: 28 -> 14 -> 7 -> 3 -> 1 (flatten = 512). Layer order and dropout
    positions as :func:`vgg16` (BN optional, off by default: the paper trains it from scratch as an
    SNN, where batch norm cannot be trained natively).
    """
    _check(num_classes, dropout)
    return _vgg(_VGG16_MNIST, in_shape, [512, 512], num_classes, batch_norm, bn_position,
                _block_dropout(_VGG16_MNIST, dropout, dropout), dropout, dropout, width_multiplier)


@register_model
def vgg16_places365(*, in_shape=(3, 224, 224), num_classes: int = 365, batch_norm: bool = False,
                    dropout: float = 0.5, width_multiplier: float = 1.0,
                    bn_position: str = "after") -> nn.Sequential:
    """VGG16 for PLACES365 (224x224): the 13 convs of :func:`vgg16`, flatten (512x7x7), dense 4096, 4096, 365.

    As the original Places365 VGG16: conv -> ReLU (BN optional, off by default), dropout only after
    the two hidden dense layers.
    """
    _check(num_classes, dropout)
    return _vgg(_VGG16, in_shape, [4096, 4096], num_classes, batch_norm, bn_position,
                [None] * 13, None, dropout, width_multiplier)


@register_model
def vgg_fmnist(*, in_shape=(1, 28, 28), num_classes: int = 10,
               widths: Sequence[int | str] = (32, 32, "P", 64, 64, "P", 128, 128, "P"),
               dense: Sequence[int] = (256,), batch_norm: bool = True, dropout: float = 0.0,
               width_multiplier: float = 1.0) -> nn.Sequential:
    """A small VGG for Fashion-MNIST (beyond the paper, docs/beyond_paper.md): conv 3x3 'same' blocks
    ``widths`` ("P" = max-pool 2), flatten, hidden dense layers ``dense``, classes.

    Each conv is conv -> BN -> ReLU (BN optional; folded into the conv at conversion), the dense layers
    have no BN and ``dropout`` after them: the network of benchmarks/fmnist_vgg_probe.py, whose default
    widths reach 94.3 % validation accuracy in 20 epochs (28 -> 14 -> 7 -> 3, flatten = 1152).
    """
    cfg = tuple(widths)
    if not any(item != "P" for item in cfg) or any(
            item != "P" and (isinstance(item, bool) or not isinstance(item, int) or item < 1) for item in cfg):
        raise ValueError(f"widths must be positive conv widths and 'P' (max-pool 2), at least one conv; "
                         f"got {list(widths)}")
    if any(int(units) < 1 for units in dense):
        raise ValueError(f"dense widths must be >= 1, got {list(dense)}")
    _check(num_classes, dropout)
    convs = sum(item != "P" for item in cfg)
    return _vgg(cfg, in_shape, [int(u) for u in dense], num_classes, batch_norm, "before", [None] * convs, None,
                dropout, width_multiplier, dense_batch_norm=False)


# -- ResNets -------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """conv 3x3 -> [BN] -> ReLU -> conv 3x3 -> [BN], plus the shortcut, -> ReLU (He et al. 2016).

    The shortcut is the identity, or a 1x1 convolution (stride ``stride``) -> [BN] where the shape
    changes (option B): both are linear, so the block converts exactly (an identity shortcut becomes a
    fixed delayed input group of the SNN, a projection a trainable one).
    """

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, batch_norm: bool = True):
        super().__init__()
        c_out = planes * self.expansion
        bn = (lambda n: nn.BatchNorm2d(n)) if batch_norm else (lambda n: nn.Identity())
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=not batch_norm)
        self.bn1 = bn(planes)
        self.conv2 = nn.Conv2d(planes, c_out, 3, 1, 1, bias=not batch_norm)
        self.bn2 = bn(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), bn(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(BasicBlock):
    """conv 1x1 -> conv 3x3 (stride) -> conv 1x1 (x4 channels), each with [BN], ReLU after the sum."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, batch_norm: bool = True):
        nn.Module.__init__(self)
        c_out = planes * self.expansion
        bn = (lambda n: nn.BatchNorm2d(n)) if batch_norm else (lambda n: nn.Identity())
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=not batch_norm)
        self.bn1 = bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=not batch_norm)
        self.bn2 = bn(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=not batch_norm)
        self.bn3 = bn(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), bn(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _resnet(in_shape, num_classes: int, stages: Sequence[int], widths: Sequence[int], block: str,
            batch_norm: bool, dropout: float | None, width_multiplier: float) -> nn.Sequential:
    """stem conv 3x3 -> [BN] -> ReLU, stages of blocks (stride 2 from the second stage on), global average
    pooling, flatten, [dropout], linear readout: an nn.Sequential whose blocks have their own forward."""
    c, h, w = _shape(in_shape, 3)
    _check(num_classes, dropout)
    if block not in _BLOCKS:
        raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
    kind = _BLOCKS[block]
    widths = [_width(v, width_multiplier) for v in widths]
    size = _after((h, w), "the stem", 3, 1, 1)
    layers: list[nn.Module] = [nn.Conv2d(c, widths[0], 3, 1, 1, bias=not batch_norm)]
    layers += [nn.BatchNorm2d(widths[0])] if batch_norm else []
    layers.append(nn.ReLU())
    channels = widths[0]
    for i, (count, planes) in enumerate(zip(stages, widths, strict=True)):
        for j in range(int(count)):
            stride = 2 if i > 0 and j == 0 else 1
            size = _after(size, f"stage {i + 1}", 3, stride, 1)
            layers.append(kind(channels, planes, stride, batch_norm))
            channels = planes * kind.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), *_dropout(dropout), nn.Linear(channels, int(num_classes))]
    model = _init(nn.Sequential(*layers))
    model.config = {"in_shape": (c, h, w)}
    return model


@register_model
def resnet20(*, in_shape=(3, 32, 32), num_classes: int = 10, batch_norm: bool = True, dropout: float = 0.0,
             width_multiplier: float = 1.0, block: str = "basic") -> nn.Sequential:
    """CIFAR ResNet-20 (He et al. 2016): 3 stages of 3 BasicBlocks, 16/32/64 channels, projection
    shortcuts (option B), global average pooling, dropout (if any) before the readout."""
    return _resnet(in_shape, num_classes, (3, 3, 3), (16, 32, 64), block, batch_norm, dropout, width_multiplier)


@register_model
def resnet18_cifar(*, in_shape=(3, 32, 32), num_classes: int = 10, batch_norm: bool = True, dropout: float = 0.0,
                   width_multiplier: float = 1.0, block: str = "basic") -> nn.Sequential:
    """ResNet-18 for 32x32 inputs: a 3x3 stem without max-pool, 4 stages of 2 BasicBlocks, 64..512 channels
    (``block="bottleneck"`` gives the Bottleneck variant), global average pooling, readout."""
    return _resnet(in_shape, num_classes, (2, 2, 2, 2), (64, 128, 256, 512), block, batch_norm, dropout,
                   width_multiplier)


@register_model
def resnet_small(*, in_shape=(1, 28, 28), num_classes: int = 10, batch_norm: bool = True, dropout: float = 0.0,
                 width_multiplier: float = 1.0, block: str = "basic") -> nn.Sequential:
    """A small ResNet for Fashion-MNIST: 3 stages of one block, 16/32/64 channels (28 -> 14 -> 7)."""
    return _resnet(in_shape, num_classes, (1, 1, 1), (16, 32, 64), block, batch_norm, dropout, width_multiplier)
