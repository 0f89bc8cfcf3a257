"""Datasets too large for memory (PLACES365): an index of the files a user has, streamed with torch.utils.data.

``prepare`` does not copy PLACES365 into one tensor (1.8 M images of 256x256 would not fit). It reads
torchvision's Places365 layout (``small`` variant) where it lies::

    <root>/categories_places365.txt
    <root>/places365_train_standard.txt     training list: /a/airfield/00000001.jpg <label>
    <root>/places365_val.txt                 the official validation list (the paper's test set)
    <root>/data_256_standard/a/airfield/00000001.jpg ...
    <root>/val_256/Places365_val_00000001.jpg ...

and writes ``data/prepared/places365/``: ``train.tsv``, ``val.tsv`` (held out from the training list,
stratified and seeded as for every dataset), ``test.tsv`` (the official validation list), one line per
image present on disk (``path<TAB>label<TAB>bytes<TAB>sha256``; listed images that are missing are
counted, not indexed), and ``meta.json`` with the per-channel mean/std of a seeded sample of training
images, the file lists' md5 (``official`` when they are torchvision's) and the sha256 of each index.
The root itself stays out of the prepared files (the same images found elsewhere give the same
outputs); loaders take it from ``data.datasets.places365.root`` again.

Reading (:class:`ImageIndex`, :class:`StreamBatches`): a ``torch.utils.data.DataLoader`` with worker
processes and pinned memory (on CUDA) decodes each image with PIL and torchvision's standard transforms
(resize to 256/224 of the image size, centre crop, to tensor, normalise), checking every file's size
against the index (a truncated or replaced image is a :class:`pipeline.errors.ChecksumError`; with
``verify=True`` its sha256 too). Batches follow the same seeded global order as the in-memory
:class:`ttfs.train.TensorBatches`; under torchrun each process loads only its slice of every global
batch. Memory holds the index and the batches in flight, independent of the dataset's size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .data import DatasetShape
from .errors import ChecksumError, DataNotFoundError, ParamsError

CATEGORIES = "categories_places365.txt"
LISTS = {"train": "places365_train_standard.txt", "test": "places365_val.txt"}
OFFICIAL_MD5 = {  # torchvision.datasets.Places365
    CATEGORIES: "06c963b85866bd0649f97cb43dd16673",
    LISTS["train"]: "30f37515461640559006b8329efbed1a",
    LISTS["test"]: "e9f2fd57bfd9d07630173f4e8708e4b1",
}
STATS_SAMPLES = 1000  # training images whose pixels give the per-channel mean and std
INDEX_FILES = ("train.tsv", "val.tsv", "test.tsv")


def image_dirs(small: bool) -> dict[str, str]:
    size = "256" if small else "large"
    return {"train": f"data_{size}_standard", "test": f"val_{size}"}


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the root
    label: int
    size: int
    sha256: str


def _sha256(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        data = f.read()
    h.update(data)
    return len(data), h.hexdigest()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def find_root(params, download_dir: Path) -> Path:
    """The directory holding torchvision's Places365 layout: ``root`` from params, else an earlier download."""
    tried = []
    for label, root in ((f"data.datasets.places365.root = {params.root}", params.root),
                        (f"earlier download in {download_dir}", download_dir / "places365")):
        if root is None:
            tried.append("data.datasets.places365.root: not set")
            continue
        root = Path(root).expanduser()
        if (root / CATEGORIES).is_file() and (root / LISTS["train"]).is_file():
            return root
        tried.append(f"{label}: no {CATEGORIES} and {LISTS['train']} there")
    raise DataNotFoundError(
        "dataset 'places365' not found. Sources tried, in order:\n  - " + "\n  - ".join(tried)
        + f"\nTo provide it: set data.datasets.places365.root to a directory in torchvision's Places365 layout "
        f"({CATEGORIES}, {LISTS['train']}, {LISTS['test']}, {image_dirs(True)['train']}/, "
        f"{image_dirs(True)['test']}/), e.g. after torchvision.datasets.Places365(root, small=True, download=True)")


def _read_list(root: Path, name: str, image_dir: str, classes: int) -> list[tuple[str, int]]:
    rows = []
    for n, line in enumerate((root / name).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= classes:
            raise ChecksumError(f"{root / name}: line {n} is not '<image> <label < {classes}>': {line!r}; "
                                "provide torchvision's file list")
        rows.append((f"{image_dir}/{parts[0].lstrip('/')}", int(parts[1])))
    return rows


def _index(root: Path, rows: list[tuple[str, int]], workers: int) -> tuple[list[Entry], int]:
    """Entries of the listed images present on disk, with size and sha256 (hashed in ``workers`` threads)."""
    present = [(p, y) for p, y in rows if (root / p).is_file()]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        sums = list(pool.map(lambda row: _sha256(root / row[0]), present))
    return [Entry(p, y, size, sha) for (p, y), (size, sha) in zip(present, sums, strict=True)], \
        len(rows) - len(present)


def _write_index(path: Path, entries: list[Entry]) -> str:
    path.write_text("".join(f"{e.path}\t{e.label}\t{e.size}\t{e.sha256}\n" for e in entries))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_index(path: Path) -> list[Entry]:
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) != 4:
            raise ChecksumError(f"{path}: line {n} is not path<TAB>label<TAB>bytes<TAB>sha256")
        entries.append(Entry(parts[0], int(parts[1]), int(parts[2]), parts[3]))
    return entries


def transform(image_size: int, mean: list[float], std: list[float]):
    """torchvision's standard evaluation transform: resize (256/224 of the size), centre crop, normalise."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(mean, std)])


def prepare_places365(params, out_dir: Path, download_dir: Path) -> tuple[dict, str]:
    """Index, checksums and normalisation of the PLACES365 images a user has; returns (meta, source)."""
    from .data import Split, hold_out

    root = find_root(params, download_dir)
    classes = [line.split()[0] for line in (root / CATEGORIES).read_text().splitlines() if line.strip()]
    dirs = image_dirs(params.small)
    indexed, missing = {}, {}
    for split, name in LISTS.items():
        if not (root / name).is_file():
            raise DataNotFoundError(f"{root / name} is missing: the Places365 layout needs both file lists")
        indexed[split], missing[split] = _index(root, _read_list(root, name, dirs[split], len(classes)),
                                                params.workers)
        if not indexed[split]:
            raise DataNotFoundError(f"none of the images listed in {root / name} is under {root / dirs[split]}")
    train = indexed["train"]
    labels = torch.tensor([e.label for e in train])
    kept, held = hold_out(Split(torch.arange(len(train)), labels), params.val_size, params.split_seed,
                          "data.datasets.places365.val_size")
    splits = {"train": [train[i] for i in kept.pixels.tolist()], "val": [train[i] for i in held.pixels.tolist()],
              "test": indexed["test"]}
    mean, std = _channel_stats(root, splits["train"], params.image_size, params.split_seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    lists_md5 = {n: _md5(root / n) for n in (CATEGORIES, *LISTS.values())}
    meta = {
        "dataset": "places365",
        "format": "image_index",
        "layout": {"small": params.small, "image_dirs": dirs},
        "file_lists_md5": lists_md5,
        "file_lists_official": all(lists_md5[n] == OFFICIAL_MD5[n] for n in lists_md5),
        "missing_images": missing,
        "in_shape": [3, params.image_size, params.image_size],
        "num_classes": len(classes),
        "classes": classes,
        "train_size": len(splits["train"]),
        "val_size": len(splits["val"]),
        "test_size": len(splits["test"]),
        "split": {"val_size": params.val_size, "split_seed": params.split_seed, "stratified": True,
                  "test": "the official validation list"},
        "input_encoding": {"pixels": "torchvision Resize/CenterCrop/ToTensor", "mean": mean, "std": std,
                           "stats_samples": min(STATS_SAMPLES, len(splits["train"]))},
        "p": -3.0,
        "q": 3.0,
        "sha256": {f"{s}.tsv": _write_index(out_dir / f"{s}.tsv", splits[s]) for s in ("train", "val", "test")},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta, f"image folder {root}"


def _channel_stats(root: Path, entries: list[Entry], image_size: int, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the pixels of up to STATS_SAMPLES seeded training images (float64 sums)."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(entries), generator=g)[:STATS_SAMPLES].sort().values.tolist()
    data = ImageIndex(root, [entries[i] for i in pick], image_size, [0.0] * 3, [1.0] * 3)
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for i in range(len(data)):
        x = data[i][0].to(torch.float64)
        total += x.sum(dim=(1, 2))
        squares += (x * x).sum(dim=(1, 2))
        count += x[0].numel()
    mean = total / count
    std = (squares / count - mean * mean).clamp(min=1e-12).sqrt()
    return mean.tolist(), std.tolist()


class ImageIndex(torch.utils.data.Dataset):
    """Indexed images under ``root``, decoded and transformed on access; sizes (and sha256) checked."""

    def __init__(self, root: Path, entries: list[Entry], image_size: int, mean: list[float], std: list[float],
                 verify: bool = False):
        self.root, self.entries, self.verify = Path(root), entries, verify
        self.labels = torch.tensor([e.label for e in entries], dtype=torch.int64)
        self.in_shape = (3, image_size, image_size)
        self.transform = transform(image_size, mean, std)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        import io

        from PIL import Image

        e = self.entries[i]
        path = self.root / e.path
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ChecksumError(f"{path}: indexed by prepare but unreadable now ({err}); restore the file or "
                                "prepare places365 again") from err
        if len(data) != e.size or (self.verify and hashlib.sha256(data).hexdigest() != e.sha256):
            raise ChecksumError(f"{path}: {len(data)} bytes, the index recorded {e.size}"
                                + (" and another sha256" if self.verify else "")
                                + "; the image was truncated or replaced: restore it or prepare places365 again")
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except Exception as err:  # PIL raises many kinds for damaged files
            raise ChecksumError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
        return self.transform(image), e.label


def _collate(items: list[tuple[Tensor, int]], in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    if not items:  # an empty slice of a data-parallel process
        return torch.empty(0, *in_shape), torch.empty(0, dtype=torch.int64)
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


class _Collate:  # picklable for worker processes
    def __init__(self, in_shape):
        self.in_shape = in_shape

    def __call__(self, items):
        return _collate(items, self.in_shape)


class StreamBatches:
    """Mini-batches streamed from an :class:`ImageIndex`: the interface of :class:`ttfs.train.TensorBatches`.

    The same seeded global order as TensorBatches (``generator`` is all a checkpoint needs); ``rank`` and
    ``world`` load only that process's slice of each global batch (``sharded``). ``workers`` decoding
    processes; pinned memory when the device is CUDA.
    """

    sharded = True

    def __init__(self, dataset: ImageIndex, batch_size: int, shuffle: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None, workers: int = 0,
                 rank: int = 0, world: int = 1):
        self.dataset, self.labels = dataset, dataset.labels
        self.batch_size, self.shuffle = int(batch_size), shuffle
        self.device, self.dtype = torch.device(device), dtype
        self.workers, self.rank, self.world = workers, rank, world
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def slice(self, rank: int, world: int) -> StreamBatches:
        """The same batches (same seed and order), of which process ``rank`` of ``world`` loads its slice."""
        other = StreamBatches(self.dataset, self.batch_size, self.shuffle, 0, self.device, self.dtype, self.workers,
                              rank, world)
        other.generator.set_state(self.generator.get_state())
        return other

    def index_batches(self) -> list[list[int]]:
        """This process's dataset indices of every global batch of the next epoch (advances the generator)."""
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        return [idx.tensor_split(self.world)[self.rank].tolist() for idx in order.split(self.batch_size)]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.index_batches(), num_workers=self.workers,
            pin_memory=self.device.type == "cuda", collate_fn=_Collate(self.dataset.in_shape))
        for x, y in loader:
            yield (x.to(self.device, self.dtype or x.dtype, non_blocking=True),
                   y.to(self.device, non_blocking=True))


@dataclass
class Streamed(DatasetShape):
    """A prepared image-index dataset: meta, the root it reads from, and its splits' indices."""

    meta: dict
    root: Path
    entries: dict[str, list[Entry]]
    verify: bool = False

    def dataset(self, split: str) -> ImageIndex:
        enc = self.meta["input_encoding"]
        return ImageIndex(self.root, self.entries[split], self.in_shape[-1], enc["mean"], enc["std"], self.verify)


def is_streamed(directory: str | Path) -> bool:
    """Whether ``directory`` holds a prepared image index (not tensors)."""
    return (Path(directory) / "train.tsv").is_file()


def load_streamed(directory: str | Path, root: str | Path | None) -> Streamed:
    """A prepared image index, its files checked against meta.json; ``root`` is where the images lie."""
    directory = Path(directory)
    meta_file = directory / "meta.json"
    fix = f"restore it with `dvc checkout {directory}` or regenerate it with `dvc repro prepare@{directory.name}`"
    if not meta_file.is_file():
        raise DataNotFoundError(f"{meta_file} is missing: run the prepare stage (`dvc repro prepare@{directory.name}`)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != "image_index":
        raise ChecksumError(f"{meta_file} is not an image index; {fix}")
    if root is None:
        raise ParamsError(f"data.datasets.{meta['dataset']}.root: not set; the images are read from there")
    entries = {}
    for split in ("train", "val", "test"):
        path = directory / f"{split}.tsv"
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != meta["sha256"][f"{split}.tsv"]:
            raise ChecksumError(f"{path}: missing or checksum mismatch with {meta_file}; {fix}")
        entries[split] = read_index(path)
    if len(entries["train"]) != meta["train_size"]:
        raise ChecksumError(f"{directory / 'train.tsv'} does not match {meta_file}; {fix}")
    return Streamed(meta, Path(root).expanduser(), entries)
