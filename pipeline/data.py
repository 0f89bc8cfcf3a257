"""Datasets: find raw files, verify their checksums, and write/read the prepared tensors (SPEC 8).

Raw sources are tried in a fixed order (a directory from params, the Debian package's copy, a
torchvision download) and the first one that has the files wins; files that are there but do not
match their known checksum are an error rather than a reason to try the next source, so corruption is
never papered over. Prepared data is stored as uint8 pixels plus the per-channel normalisation in
meta.json: four times smaller than float32 in DVC's cache, and decoded to identical float32 tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ChecksumError, DataNotFoundError, ParamsError
from .params import Places365Params, SourceParams, SyntheticParams

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "val", "test")
PREPARED_FILES = (*(f"{s}.pt" for s in SPLITS), "meta.json")


# -- registry ----------------------------------------------------------------------------------------

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str  # idx | cifar | places365 | synthetic
    folder: str  # torchvision's folder name under the root
    classes: tuple[str, ...]
    in_shape: tuple[int, int, int]
    standardise: bool  # per-channel standardisation with [p, q] = [-3, 3] (else [0, 1] pixels)
    md5: dict  # raw file -> accepted md5 of the file as stored (torchvision's, Debian's .gz)
    sha256: dict  # raw file -> sha256 of its uncompressed content (independent of compression)
    apt_package: str | None = None
    torchvision_class: str | None = None


_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

SPECS = {
    "mnist": DatasetSpec(
        "mnist", "idx", "MNIST", tuple(str(i) for i in range(10)), (1, 28, 28), False,
        md5={  # torchvision.datasets.MNIST.resources
            "train-images-idx3-ubyte.gz": {"f68b3c2dcbeaaa9fbdd348bbdeb94873"},
            "train-labels-idx1-ubyte.gz": {"d53e105ee54ea40749a09fcbcd1e9432"},
            "t10k-images-idx3-ubyte.gz": {"9fb629c4189551a2d022fa330f9573f3"},
            "t10k-labels-idx1-ubyte.gz": {"ec29112dd5afa0611ce80d1b7f02629c"},
        },
        sha256={},
        torchvision_class="MNIST",
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", "idx", "FashionMNIST", _FASHION, (1, 28, 28), False,
        md5={  # torchvision.datasets.FashionMNIST.resources, and Debian's recompressed files
            "train-images-idx3-ubyte.gz": {"8d4fb7e6c68d591d4c3dfef9ec88bf0d", "cf8536b0aa1a6ac5fa3f23001093305c"},
            "train-labels-idx1-ubyte.gz": {"25c81989df183df01b3e8a0aad5dffbe", "10bea18fdb374794d4bb42e356e600c9"},
            "t10k-images-idx3-ubyte.gz": {"bef4ecab320f06d8554ea6380940ec79", "f78720b4224f21cce2f2ccf2d7a94c9a"},
            "t10k-labels-idx1-ubyte.gz": {"bb300cfdad3c16e7a12a480ee83cd310", "0d30e22e447f3c33dab9ed536400ac01"},
        },
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        apt_package="dataset-fashion-mnist",
        torchvision_class="FashionMNIST",
    ),
    "cifar10": DatasetSpec(
        "cifar10", "cifar", "cifar-10-batches-py", (), (3, 32, 32), True,
        md5={  # torchvision.datasets.CIFAR10
            "data_batch_1": {"c99cafc152244af753f735de768cd75f"},
            "data_batch_2": {"d4bba439e000b95fd0a9bffe97cbabec"},
            "data_batch_3": {"54ebc095f3ab1f0389bbae665268c751"},
            "data_batch_4": {"634d18415352ddfa80567beed471001a"},
            "data_batch_5": {"482c414d41f54cd18b22e5b47cb7c3cb"},
            "test_batch": {"40351d587109b95175f43aff81a1287e"},
            "batches.meta": {"5ff9c542aee3614f3951f8cda6e48888"},
        },
        sha256={},
        torchvision_class="CIFAR10",
    ),
    "cifar100": DatasetSpec(
        "cifar100", "cifar", "cifar-100-python", (), (3, 32, 32), True,
        md5={  # torchvision.datasets.CIFAR100
            "train": {"16019d7e3df5f24257cddd939b257f8d"},
            "test": {"f0ef6b0ae62326f3e7ffdfab6717acfc"},
            "meta": {"7973b15100ade9c7d40fb424638fde48"},
        },
        sha256={},
        torchvision_class="CIFAR100",
    ),
    "places365": DatasetSpec(
        "places365", "places365", "places365", (), (3, 224, 224), True,
        md5={  # torchvision.datasets.Places365 (the file lists; images are too many to hash)
            "categories_places365.txt": {"06c963b85866bd0649f97cb43dd16673"},
            "places365_train_standard.txt": {"30f37515461640559006b8329efbed1a"},
            "places365_val.txt": {"e9f2fd57bfd9d07630173f4e8708e4b1"},
        },
        sha256={},
        torchvision_class="Places365",
    ),
    "synthetic": DatasetSpec("synthetic", "synthetic", "", (), (1, 8, 8), False, {}, {}),
}

CIFAR_FILES = {
    "cifar10": ({"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                "batches.meta", "labels", "label_names"),
    "cifar100": ({"train": ["train"], "test": ["test"]}, "meta", "fine_labels", "fine_label_names"),
}


# -- checksums ---------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_verified(path: Path, spec: DatasetSpec) -> bytes:
    """Content of a raw file (gunzipped if .gz), accepted only if a known checksum matches.

    A stored-file md5 (torchvision's lists) or the sha256 of the uncompressed content must match;
    recompressed copies are recognised by the latter. Files with no known checksum at all (uncompressed
    MNIST, which torchvision never lists) are accepted only if their structure checks out (idx sizes).
    """
    name = path.name
    try:
        content = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ChecksumError(f"{path}: corrupt or truncated archive ({e}); delete it and provide a good copy") from e
    md5_ok = name in spec.md5 and hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() in spec.md5[name]
    base = name.removesuffix(".gz")
    known_sha = spec.sha256.get(base)
    if md5_ok or (known_sha and hashlib.sha256(content).hexdigest() == known_sha):
        return content
    if name in spec.md5 or known_sha:
        raise ChecksumError(
            f"{path}: checksum mismatch (corrupt, truncated or a different file); delete it and provide a good copy"
        )
    return content  # no checksum known: read_idx still checks the size against the header


def read_idx(content: bytes, where: str) -> np.ndarray:
    """Parse an idx file (the MNIST format); a size that disagrees with the header is an error."""
    if len(content) < 4 or content[:2] != b"\x00\x00" or content[2] != 0x08:
        raise ChecksumError(f"{where}: not an unsigned-byte idx file")
    ndim = content[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(content) != header + int(np.prod(dims)):
        expected = header + int(np.prod(dims))
        raise ChecksumError(f"{where}: truncated or padded ({len(content)} bytes, the header says {expected})")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


# -- sources -----------------------------------------------------------------------------------------


def _candidates(spec: DatasetSpec, root: Path) -> list[Path]:
    """Directories under a user root where torchvision or a plain copy would keep the files."""
    return [root, root / spec.folder / "raw", root / spec.folder]


def _find_files(directory: Path, names: list[str]) -> dict[str, Path] | None:
    """name -> path for every raw file (a .gz copy preferred for idx files), or None if any is missing."""
    found = {}
    for name in names:
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            return None
    return found


def _raw_names(spec: DatasetSpec) -> list[str]:
    if spec.kind == "idx":
        return [n for pair in IDX_FILES.values() for n in pair]
    if spec.kind == "cifar":
        splits, meta, _, _ = CIFAR_FILES[spec.name]
        return [*splits["train"], *splits["test"], meta]
    return list(spec.md5)


def locate(spec: DatasetSpec, params: SourceParams | Places365Params, download_dir: Path) -> tuple[str, dict]:
    """(source description, raw file paths) from the first source that has every file."""
    names = _raw_names(spec)
    tried: list[str] = []
    roots: list[tuple[str, Path]] = []
    if params.root:
        roots.append((f"data.datasets.{spec.name}.root = {params.root}", Path(params.root).expanduser()))
    else:
        tried.append(f"data.datasets.{spec.name}.root: not set")
    if spec.apt_package:
        roots.append((f"Debian package {spec.apt_package} ({DEBIAN_FASHION_MNIST})", DEBIAN_FASHION_MNIST))
    roots.append((f"earlier download in {download_dir}", download_dir))
    for label, root in roots:
        for directory in _candidates(spec, root) if root.exists() else []:
            files = _find_files(directory, names)
            if files:
                return f"{label}: {directory}", files
        tried.append(f"{label}: not found")
    if params.download and spec.torchvision_class:
        try:
            _download(spec, download_dir)
        except Exception as e:  # offline machines fail in many ways (DNS, proxy, TLS); all mean "no source"
            tried.append(f"torchvision download into {download_dir}: failed ({type(e).__name__}: {e})")
        else:
            for directory in _candidates(spec, download_dir):
                files = _find_files(directory, names)
                if files:
                    return f"torchvision download: {directory}", files
            tried.append(f"torchvision download into {download_dir}: finished but the files are not there")
    else:
        tried.append(f"torchvision download: disabled (data.datasets.{spec.name}.download = false)")
    how = [f"set data.datasets.{spec.name}.root to a directory holding {', '.join(names[:2])}, ... "
           f"(torchvision's layout <root>/{spec.folder}/... works)"]
    if spec.apt_package:
        how.insert(0, f"install the Debian package: apt-get install {spec.apt_package}")
    if spec.torchvision_class:
        how.append(f"or allow a download (data.datasets.{spec.name}.download: true) on a machine with internet")
    raise DataNotFoundError(
        f"dataset {spec.name!r} not found. Sources tried, in order:\n  - " + "\n  - ".join(tried)
        + "\nTo provide it: " + "; ".join(how)
    )


def _download(spec: DatasetSpec, download_dir: Path) -> None:
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.torchvision_class)
    download_dir.mkdir(parents=True, exist_ok=True)
    if spec.kind == "places365":
        for split in ("train-standard", "val"):
            cls(str(download_dir), split=split, small=True, download=True)
    else:
        cls(str(download_dir), train=True, download=True)
        cls(str(download_dir), train=False, download=True)


# -- readers -----------------------------------------------------------------------------------------


@dataclass
class Split:
    pixels: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)


def _read_idx_dataset(spec: DatasetSpec, files: dict) -> tuple[dict[str, Split], dict]:
    splits, checksums = {}, {}
    for split, (images, labels) in IDX_FILES.items():
        arrays = []
        for name in (images, labels):
            content = read_verified(files[name], spec)
            checksums[name] = hashlib.sha256(content).hexdigest()
            arrays.append(read_idx(content, str(files[name])))
        x, y = arrays
        if len(x) != len(y):
            raise ChecksumError(f"{files[images]}: {len(x)} images but {len(y)} labels in {files[labels]}")
        splits[split] = Split(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    return splits, checksums


def _unpickle(path: Path, spec: DatasetSpec) -> dict:
    return pickle.loads(read_verified(path, spec), encoding="latin1")


def _read_cifar(spec: DatasetSpec, files: dict) -> tuple[dict[str, Split], dict, tuple[str, ...]]:
    split_files, meta_file, label_key, names_key = CIFAR_FILES[spec.name]
    splits = {}
    for split, names in split_files.items():
        batches = [_unpickle(files[n], spec) for n in names]
        x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        splits[split] = Split(torch.from_numpy(x.copy()), torch.from_numpy(y))
    classes = tuple(_unpickle(files[meta_file], spec)[names_key])
    checksums = {n: md5_file(p) for n, p in files.items()}
    return splits, checksums, classes


def synthetic(params: SyntheticParams) -> dict[str, Split]:
    """Noisy copies of one smooth random prototype per class: learnable by dense and conv nets alike."""
    c, h, w = params.shape
    g = torch.Generator().manual_seed(params.seed)
    coarse = torch.randn(params.classes, c, max(h // 2, 1), max(w // 2, 1), generator=g)
    prototypes = torch.sigmoid(3 * torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear"))
    splits = {}
    for split, n in (("train", params.train_size), ("test", params.test_size)):
        labels = torch.randint(params.classes, (n,), generator=g)
        gain = 0.7 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
        x = prototypes[labels] * gain + params.noise * torch.randn(n, c, h, w, generator=g)
        splits[split] = Split((x.clamp(0, 1) * 255).round().to(torch.uint8), labels)
    return splits


def hold_out(train: Split, size: int, seed: int, where: str = "val_size") -> tuple[Split, Split]:
    """(train, validation): ``size`` training images held out, each class in proportion (seeded).

    Largest remainders decide the classes that get one more image, so the sizes add up exactly.
    """
    if size >= len(train.labels):
        raise ParamsError(f"{where}: {size} leaves no training image (the training split has {len(train.labels)})")
    g = torch.Generator().manual_seed(seed)
    counts = torch.bincount(train.labels)
    share = counts.to(torch.float64) * size / len(train.labels)
    take = share.floor().long()
    extra = (share - take).argsort(descending=True, stable=True)[: size - int(take.sum())]
    take[extra] += 1
    val = torch.cat([torch.nonzero(train.labels == c).flatten()[torch.randperm(int(n), generator=g)[: int(k)]]
                     for c, (n, k) in enumerate(zip(counts.tolist(), take.tolist(), strict=True))])
    keep = torch.ones(len(train.labels), dtype=torch.bool)
    keep[val] = False
    val = val.sort().values
    return (Split(train.pixels[keep], train.labels[keep]), Split(train.pixels[val], train.labels[val]))


# -- prepared data -----------------------------------------------------------------------------------


def _save_tensors(path: Path, split: Split) -> str:
    """torch.save of fresh contiguous tensors is byte-for-byte reproducible; returns the file's sha256."""
    tmp = path.with_suffix(".tmp")
    torch.save({"pixels": split.pixels.contiguous().clone(), "labels": split.labels.contiguous().clone()}, tmp)
    tmp.replace(path)
    return sha256_file(path)


def prepare(name: str, params, out_dir: Path, download_dir: Path) -> tuple[dict, str]:
    """Write out_dir/{train.pt, test.pt, meta.json} for dataset ``name``; returns (metadata, source).

    The source stays out of meta.json: the same data found elsewhere must give identical outputs.
    """
    spec = SPECS[name]
    if spec.kind == "places365":  # too large for memory: an index of the image files (pipeline.streaming)
        from .streaming import prepare_places365

        return prepare_places365(params, out_dir, download_dir)
    classes = spec.classes
    if spec.kind == "synthetic":
        splits, source, checksums = synthetic(params), "synthetic generator", {}
        classes = tuple(str(i) for i in range(params.classes))
    else:
        source, files = locate(spec, params, download_dir)
        if spec.kind == "idx":
            splits, checksums = _read_idx_dataset(spec, files)
        else:
            splits, checksums, classes = _read_cifar(spec, files)
    splits["train"], splits["val"] = hold_out(splits["train"], params.val_size, params.split_seed,
                                              f"data.datasets.{name}.val_size")
    train = splits["train"]
    channels = train.pixels.shape[1]
    if spec.standardise:
        scaled = train.pixels.to(torch.float64) / 255
        mean = scaled.mean(dim=(0, 2, 3)).tolist()
        std = scaled.std(dim=(0, 2, 3)).tolist()
        p, q = -3.0, 3.0
    else:
        mean, std, p, q = [0.0] * channels, [1.0] * channels, 0.0, 1.0
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "dataset": name,
        "raw_sha256": checksums,
        "in_shape": list(train.pixels.shape[1:]),
        "num_classes": len(classes),
        "classes": list(classes),
        "train_size": len(train.labels),
        "val_size": len(splits["val"].labels),
        "test_size": len(splits["test"].labels),
        "split": {"val_size": params.val_size, "split_seed": params.split_seed, "stratified": True},
        "input_encoding": {"pixels": "uint8 / 255", "mean": mean, "std": std},
        "p": p,
        "q": q,
        "sha256": {f"{s}.pt": _save_tensors(out_dir / f"{s}.pt", splits[s]) for s in SPLITS},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta, source


class DatasetShape:
    """What a model needs to know of a prepared dataset, read from its ``meta``: input shape, classes and
    the input range (p, q) of the encoding. Shared by in-memory (:class:`Prepared`) and streamed datasets."""

    meta: dict

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["in_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def in_range(self) -> tuple[float, float]:
        return float(self.meta["p"]), float(self.meta["q"])


@dataclass
class Prepared(DatasetShape):
    """A prepared dataset, decoded to float inputs ((pixels / 255 - mean) / std) and int64 labels."""

    meta: dict
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of ``train``, ``val`` or ``test``."""
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


def _meta_problem(meta) -> str | None:
    """What is wrong with a parsed meta.json, or None: every value that loading and the stages read."""
    def count(v):
        return type(v) is int and v > 0

    def number(v):
        return type(v) in (int, float) and math.isfinite(v)

    if not isinstance(meta, dict):
        return "not a JSON object"
    shape = meta.get("in_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(map(count, shape))):
        return "in_shape must be a list of 3 positive integers"
    for key in ("num_classes", "train_size", "test_size"):
        if not count(meta.get(key)):
            return f"{key} must be a positive integer"
    if type(meta.get("val_size")) is not int or meta["val_size"] < 0:
        return "val_size must be a non-negative integer (prepared before the validation split? prepare again)"
    if not (number(meta.get("p")) and number(meta.get("q"))):
        return "p and q must be numbers"
    enc = meta.get("input_encoding")
    for key in ("mean", "std"):
        values = enc.get(key) if isinstance(enc, dict) else None
        if not (isinstance(values, list) and len(values) == shape[0] and all(map(number, values))):
            return f"input_encoding.{key} must be a list of {shape[0]} numbers (one per channel)"
    if not all(v > 0 for v in enc["std"]):
        return "input_encoding.std must be positive"
    sha = meta.get("sha256")
    if not (isinstance(sha, dict) and all(isinstance(sha.get(f"{s}.pt"), str) for s in SPLITS)):
        return "sha256 must map train.pt, val.pt and test.pt to their checksums"
    return None


def _load_split(path: Path, meta_file: Path, meta: dict, split: str, fix: str) -> dict:
    """One split's tensors, loaded as plain data (no code runs) and checked against meta.json.

    The sha256 already matched, so a failure here means meta.json was edited to fit another file.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refusal or a damaged file: torch raises all kinds
        raise ChecksumError(f"{path} cannot be loaded as plain tensors ({type(e).__name__}); {fix}") from e
    n, shape = meta[f"{split}_size"], tuple(meta["in_shape"])
    pixels, labels = (data.get(k) if isinstance(data, dict) else None for k in ("pixels", "labels"))
    if not (isinstance(pixels, torch.Tensor) and pixels.dtype == torch.uint8 and pixels.shape == (n, *shape)
            and isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and labels.shape == (n,)
            and (n == 0 or 0 <= labels.min() <= labels.max() < meta["num_classes"])):
        raise ChecksumError(f"{path} does not match {meta_file} (split size, in_shape or num_classes); {fix}")
    return data


def load_prepared(directory: str | Path) -> Prepared:
    """Read a prepared dataset, verifying meta.json and each tensor file against the sha256 it records.

    Any damage is a ChecksumError naming the file and the fix (restore the DVC output or prepare again).
    """
    directory = Path(directory)
    meta_file = directory / "meta.json"
    fix = f"restore it with `dvc checkout {directory}` or regenerate it with `dvc repro prepare@{directory.name}`"
    if not meta_file.is_file():
        raise DataNotFoundError(f"{meta_file} is missing: run the prepare stage (`dvc repro prepare@{directory.name}`)")
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ChecksumError(f"{meta_file} cannot be read as JSON ({e}); {fix}") from e
    problem = _meta_problem(meta)
    if problem:
        raise ChecksumError(f"{meta_file} is corrupt: {problem}; {fix}")
    enc = meta["input_encoding"]
    mean = torch.tensor(enc["mean"], dtype=torch.float32).reshape(1, -1, 1, 1)
    std = torch.tensor(enc["std"], dtype=torch.float32).reshape(1, -1, 1, 1)
    tensors = []
    for split in SPLITS:
        path = directory / f"{split}.pt"
        if not path.is_file() or sha256_file(path) != meta["sha256"][f"{split}.pt"]:
            raise ChecksumError(f"{path}: missing or checksum mismatch with {meta_file}; {fix}")
        data = _load_split(path, meta_file, meta, split, fix)
        tensors += [(data["pixels"].to(torch.float32) / 255 - mean) / std, data["labels"]]
    return Prepared(meta, *tensors)


def load_or_prepare(name: str, directory: str | Path | None = None) -> Prepared:
    """The prepared dataset ``name`` from ``data/prepared/<name>``, preparing it there first if needed.

    For scripts outside DVC (demo, benchmarks): the files are the prepare stage's, byte for byte.
    """
    directory = Path(directory or Path("data/prepared") / name)
    if not (directory / "meta.json").is_file():
        prepare(name, SourceParams(), directory, Path("data/raw"))
    return load_prepared(directory)
