"""PLACES365 streamed from torchvision's layout: index + checksums, DataLoader batches, sharding, damage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import prepare
from pipeline.errors import ChecksumError, DataNotFoundError
from pipeline.params import Places365Params
from pipeline.streaming import StreamBatches, load_streamed
from ttfs.train import TensorBatches, train_epoch

CLASSES = ["/a/airfield", "/b/beach", "/c/canyon"]


def fake_places365(root: Path, per_class: int = 12, test_per_class: int = 4, size: int = 40, seed: int = 0) -> Path:
    """torchvision's Places365 layout (small variant) with generated JPEG and PNG images: one colour per class."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "categories_places365.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(CLASSES)))
    train_lines, val_lines = [], []
    for label, name in enumerate(CLASSES):
        for k in range(per_class + test_per_class):
            pixels = np.clip(rng.normal(60 + 70 * label, 25, (size, size + 8 * (k % 2), 3)), 0, 255).astype(np.uint8)
            ext = "jpg" if k % 3 else "png"
            if k < per_class:
                rel = f"{name}/{k:08d}.{ext}"
                path = root / "data_256_standard" / rel.lstrip("/")
                train_lines.append(f"{rel} {label}\n")
            else:
                rel = f"Places365_val_{label:03d}{k:05d}.{ext}"
                path = root / "val_256" / rel
                val_lines.append(f"/{rel} {label}\n")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    train_lines.append(f"{CLASSES[0]}/99999999.jpg 0\n")  # listed but not on disk: counted, not indexed
    (root / "places365_train_standard.txt").write_text("".join(train_lines))
    (root / "places365_val.txt").write_text("".join(val_lines))
    return root


def _prepare(tmp_path: Path, **kw):
    root = fake_places365(tmp_path / "places365")
    params = Places365Params(root=str(root), val_size=6, image_size=16, workers=2, **kw)
    meta, source = prepare("places365", params, tmp_path / "prepared", tmp_path / "raw")
    return root, meta, source


def test_prepare_writes_an_index_with_checksums_of_the_files_present(tmp_path):
    root, meta, source = _prepare(tmp_path)
    assert str(root) in source and str(root) not in (tmp_path / "prepared" / "meta.json").read_text()
    assert (meta["train_size"], meta["val_size"], meta["test_size"]) == (30, 6, 12)
    assert meta["missing_images"] == {"train": 1, "test": 0} and meta["file_lists_official"] is False
    assert meta["in_shape"] == [3, 16, 16] and meta["num_classes"] == 3
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == ["meta.json", "test.tsv", "train.tsv",
                                                                         "val.tsv"]
    data = load_streamed(tmp_path / "prepared", root)
    assert sorted(np.bincount([e.label for e in data.entries["val"]]).tolist()) == [2, 2, 2]  # stratified
    first = data.entries["train"][0]
    assert first.size == (root / first.path).stat().st_size
    # standardised inputs: mean ~0, std ~1 per channel over the training images
    x = torch.stack([data.dataset("train")[i][0] for i in range(30)])
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.15 and (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.15
    # the same images elsewhere: byte-identical prepared files
    again = tmp_path / "elsewhere"
    fake_places365(again / "places365")
    prepare("places365", Places365Params(root=str(again / "places365"), val_size=6, image_size=16, workers=1),
            again / "prepared", tmp_path / "raw")
    for name in ("meta.json", "train.tsv", "val.tsv", "test.tsv"):
        assert (again / "prepared" / name).read_bytes() == (tmp_path / "prepared" / name).read_bytes()


def test_streamed_batches_follow_the_in_memory_order_and_shard_per_rank(tmp_path):
    root, meta, _ = _prepare(tmp_path)
    data = load_streamed(tmp_path / "prepared", root)
    ds = data.dataset("train")
    memory = torch.stack([ds[i][0] for i in range(len(ds))])
    streamed = list(StreamBatches(ds, 8, shuffle=True, seed=3, workers=2))
    in_memory = list(TensorBatches(memory, ds.labels, 8, shuffle=True, seed=3))
    assert len(streamed) == len(in_memory) == 4
    for (a, y), (b, z) in zip(streamed, in_memory, strict=True):
        assert torch.equal(a, b) and torch.equal(y, z)
    parts = [list(StreamBatches(ds, 8, shuffle=True, seed=3, rank=r, world=3)) for r in range(3)]
    for k, (x, y) in enumerate(streamed):
        assert torch.equal(torch.cat([p[k][0] for p in parts]), x)
        assert torch.equal(torch.cat([p[k][1] for p in parts]), y)


def test_a_tiny_network_trains_on_streamed_batches(tmp_path):
    root, meta, _ = _prepare(tmp_path)
    data = load_streamed(tmp_path / "prepared", root)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = StreamBatches(data.dataset("train"), 8, seed=0, workers=1)
    losses = [train_epoch(model, batches, opt)["loss"] for _ in range(4)]
    assert losses[-1] < losses[0]


def test_damaged_or_missing_data_is_an_error_naming_the_file(tmp_path):
    root, meta, _ = _prepare(tmp_path)
    data = load_streamed(tmp_path / "prepared", root)
    entry = data.entries["train"][0]
    path = root / entry.path
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    with pytest.raises(ChecksumError, match=f"{path.name}.*truncated or replaced"):
        list(StreamBatches(data.dataset("train"), 64, shuffle=False))
    index = tmp_path / "prepared" / "train.tsv"
    index.write_text(index.read_text().replace("\t0\t", "\t1\t", 1))
    with pytest.raises(ChecksumError, match="train.tsv: missing or checksum mismatch"):
        load_streamed(tmp_path / "prepared", root)
    with pytest.raises(DataNotFoundError, match="torchvision's Places365 layout"):
        prepare("places365", Places365Params(root=str(tmp_path / "nowhere")), tmp_path / "p2", tmp_path / "raw")
    assert json.loads((tmp_path / "prepared" / "meta.json").read_text())["format"] == "image_index"


def test_places365_stages_end_to_end_on_a_generated_tree(tmp_path, monkeypatch):
    """prepare -> pretrain -> convert (exact) -> finetune -> evaluate, the real stages streaming the images."""
    import yaml

    from stages import convert, evaluate, finetune, pretrain
    from stages import prepare as prepare_stage

    root = fake_places365(tmp_path / "images")
    params = {
        "data": {"datasets": {"places365": {"root": str(root), "val_size": 6, "image_size": 32, "workers": 1}}},
        "experiments": {"p365": {
            "dataset": "places365", "seed": 0, "device": "cpu", "dtype": "float64",
            "model": {"name": "vgg16_places365", "width_multiplier": 1 / 32},
            "pretrain": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "eval_batch_size": 16, "chance_margin": None},
            "convert": {"batch_size": 16},
            "finetune": {"mode": "converted", "epochs": 1, "batch_size": 8, "lr": 1e-4, "eval_batch_size": 16},
            "evaluate": {"batch_size": 16},
            "sweep": {},  # (the sweep holds its data in memory: not run on a streamed dataset)
        }},
    }
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    assert prepare_stage.main(["places365"]) == 0
    assert not list((work / "data/prepared/places365").glob("*.pt"))  # an index, no tensors
    for stage in (pretrain, convert, finetune, evaluate):
        assert stage.main(["p365"]) == 0, stage.__name__
    conv = json.loads((work / "metrics/p365/convert.json").read_text())
    assert conv["agreement"] == 1.0 and conv["max_rel_logit_diff"] <= 1e-9 and conv["causality_violations"] == 0
    fin = json.loads((work / "metrics/p365/finetune.json").read_text())
    assert fin["equivalent_relu_agreement"] == 1.0 and fin["epochs"] == 1
    assert (work / "metrics/p365/evaluate.json").is_file()


_EPOCH_PEAK = """
import sys, torch
from pipeline.streaming import StreamBatches, load_streamed

def peak():  # VmHWM: the peak resident set, in bytes
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

data = load_streamed(sys.argv[1], sys.argv[2])
torch.set_num_threads(1)
with open("/proc/self/clear_refs", "w") as f:  # reset the peak to the current resident set (Linux >= 4.0)
    f.write("5")
start = peak()
if sys.argv[3] == "stream":
    seen = sum(len(y) for _, y in StreamBatches(data.dataset("train"), 8, seed=0))
else:  # the control: what holding the split in memory costs
    ds = data.dataset("train")
    seen = len(torch.stack([ds[i][0] for i in range(len(ds))]))
print(seen, peak() - start)
"""


def test_peak_memory_of_a_streamed_epoch_does_not_grow_with_the_dataset(tmp_path):
    """One epoch over 36 and over 360 training images of 128x128: the peak memory of a streamed epoch is the
    same at both sizes, while holding the split in memory (the control, measured the same way) grows with it
    (360 x 3 x 128 x 128 float32 = 71 MB per copy)."""
    import subprocess
    import sys

    growth = {}
    for per_class in (14, 122):
        root = fake_places365(tmp_path / f"images{per_class}", per_class=per_class, test_per_class=1, size=136)
        params = Places365Params(root=str(root), val_size=6, image_size=128, workers=2)
        meta, _ = prepare("places365", params, tmp_path / f"prepared{per_class}", tmp_path / "raw")
        for mode in ("stream", "memory"):
            out = subprocess.run([sys.executable, "-c", _EPOCH_PEAK, str(tmp_path / f"prepared{per_class}"),
                                  str(root), mode], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
            seen, grew = map(int, out.stdout.split())
            assert seen == meta["train_size"]
            growth[mode, seen] = grew
    print(f"peak memory growth (bytes) during one epoch: {growth}")
    # the measurement sees a split held in memory: 10x the images, ~+70 MB per copy
    assert growth["memory", 360] - growth["memory", 36] > 60e6
    assert abs(growth["stream", 360] - growth["stream", 36]) < 15e6  # streamed: the same peak at both sizes


class _Run:
    resumed, run_id = True, "stub"

    def log_metrics(self, values: dict, step: int = 0) -> None:
        pass


def _streamed_fit(prepared: str, root: str, rank: int, world: int, snn: bool) -> dict:
    import ttfs
    from pipeline.params import FinetuneParams, PretrainParams
    from pipeline.training import fit

    data = load_streamed(prepared, root)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 12), torch.nn.ReLU(),
                                torch.nn.Linear(12, 3)).double()
    val = StreamBatches(data.dataset("val"), 16, shuffle=False, dtype=torch.float64)
    if snn:
        calib = torch.cat([x for x, _ in StreamBatches(data.dataset("train"), 16, shuffle=False,
                                                       dtype=torch.float64)])
        model = ttfs.convert(model, calib, in_range=data.in_range, zeta=0.0, dtype=torch.float64)
        p = FinetuneParams(epochs=2, batch_size=7, lr=1e-2, l1=1e-3, chance_margin=None)
    else:
        p = PretrainParams(epochs=2, batch_size=7, lr=1e-2, l1=1e-3, chance_margin=None)
    train = StreamBatches(data.dataset("train"), p.batch_size, seed=0, dtype=torch.float64, workers=0,
                          rank=rank, world=world)
    fit(model, train, val, p, Path(prepared) / f"ckpt{rank}-{world}.pt", None, _Run(), "streamed")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _streamed_worker(rank: int, prepared: str, root: str, snn: bool) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{prepared}/rendezvous", rank=rank, world_size=2)
    try:
        state = _streamed_fit(prepared, root, rank, 2, snn)
        torch.save(state, f"{prepared}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("snn", [False, True], ids=["relu", "snn"])
def test_two_processes_loading_their_slices_train_like_one_process(tmp_path, snn):
    """Streamed training under data parallelism: each process loads only its slice, the result is the
    one-process result (float64, parameters and windows within 1e-10)."""
    import torch.multiprocessing as mp

    root, meta, _ = _prepare(tmp_path)
    prepared = str(tmp_path / "prepared")
    expected = _streamed_fit(prepared, str(root), 0, 1, snn)
    mp.spawn(_streamed_worker, args=(prepared, str(root), snn), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{prepared}/rank{rank}.pt")
        for k, v in expected.items():
            assert float((got[k] - v).abs().max()) <= 1e-10, (rank, k)
