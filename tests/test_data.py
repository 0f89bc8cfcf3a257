"""Raw-data readers, checksums, the synthetic generator and the prepared format."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import data as D
from pipeline.params import SourceParams, SyntheticParams

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _idx(array: np.ndarray) -> bytes:
    return b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def _write_mnist_like(directory: Path, n_train=6, n_test=4, compress=True) -> None:
    """A tiny dataset in MNIST's idx layout (no known checksums: the structure is what is checked)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = D.IDX_FILES[split]
        for name, array in ((images, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                            (labels, rng.integers(0, 10, n, dtype=np.uint8))):
            payload = _idx(array)
            if compress:
                (directory / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (directory / name).write_bytes(payload)


def test_read_idx_roundtrip_and_truncation():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(D.read_idx(_idx(array), "x"), array)
    with pytest.raises(D.ChecksumError, match="truncated"):
        D.read_idx(_idx(array)[:-1], "x")
    with pytest.raises(D.ChecksumError, match="not an unsigned-byte idx"):
        D.read_idx(b"garbage", "x")


def test_synthetic_is_seeded_and_learnable_in_shape():
    params = SyntheticParams(train_size=64, test_size=32, shape=(3, 10, 12), classes=5, seed=3)
    a, b = D.synthetic(params), D.synthetic(params)
    assert torch.equal(a["train"].pixels, b["train"].pixels) and torch.equal(a["test"].labels, b["test"].labels)
    assert a["train"].pixels.shape == (64, 3, 10, 12) and a["train"].pixels.dtype == torch.uint8
    assert set(a["train"].labels.tolist()) <= set(range(5))
    # class structure: nearest class mean on the training split classifies the test split well
    x, y = a["train"].pixels.float().flatten(1), a["train"].labels
    means = torch.stack([x[y == c].mean(0) for c in range(5)])
    xt = a["test"].pixels.float().flatten(1)
    accuracy = (torch.cdist(xt, means).argmin(1) == a["test"].labels).float().mean()
    assert accuracy > 0.9
    other = D.synthetic(SyntheticParams(train_size=64, test_size=32, shape=(3, 10, 12), classes=5, seed=4))
    assert not torch.equal(other["train"].pixels, a["train"].pixels)


def test_prepare_synthetic_is_deterministic_and_verified(tmp_path):
    params = SyntheticParams(train_size=32, val_size=8, test_size=16, shape=(1, 8, 8), classes=3)
    meta, source = D.prepare("synthetic", params, tmp_path / "a", tmp_path / "raw")
    D.prepare("synthetic", params, tmp_path / "b", tmp_path / "raw")
    for name in D.PREPARED_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert source == "synthetic generator"
    assert meta["in_shape"] == [1, 8, 8] and meta["num_classes"] == 3 and (meta["p"], meta["q"]) == (0.0, 1.0)
    prepared = D.load_prepared(tmp_path / "a")
    assert prepared.train_x.dtype == torch.float32 and 0 <= prepared.train_x.min() <= prepared.train_x.max() <= 1
    assert prepared.in_shape == (1, 8, 8) and len(prepared.test_y) == 16
    # a damaged prepared file is caught by its checksum
    path = tmp_path / "a" / "train.pt"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(D.ChecksumError, match="train.pt"):
        D.load_prepared(tmp_path / "a")


@pytest.mark.parametrize("compress", [True, False])
def test_idx_dataset_from_a_root_in_torchvision_layout(tmp_path, monkeypatch, compress):
    raw = tmp_path / "root" / "MNIST" / "raw"
    _write_mnist_like(raw, compress=compress)
    if compress:  # our stand-in files get "known" checksums; uncompressed MNIST has none (structure check)
        known = {p.name: {D.md5_file(p)} for p in raw.iterdir()}
        monkeypatch.setitem(D.SPECS, "mnist", dataclasses.replace(D.SPECS["mnist"], md5=known))
    meta, source = D.prepare("mnist", SourceParams(root=str(tmp_path / "root"), download=False, val_size=2),
                             tmp_path / "out", tmp_path / "raw")
    assert "data.datasets.mnist.root" in source
    assert (meta["train_size"], meta["val_size"], meta["test_size"]) == (4, 2, 4)
    assert meta["in_shape"] == [1, 28, 28]


def test_unknown_compressed_file_is_rejected(tmp_path):
    _write_mnist_like(tmp_path / "root")
    with pytest.raises(D.ChecksumError, match="train-images-idx3-ubyte.gz: checksum mismatch"):
        D.prepare("mnist", SourceParams(root=str(tmp_path / "root"), download=False), tmp_path / "out",
                  tmp_path / "raw")


def test_truncated_archive_is_a_checksum_error(tmp_path):
    directory = tmp_path / "root"
    _write_mnist_like(directory)
    path = directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(D.ChecksumError, match="train-images-idx3-ubyte.gz"):
        D.prepare("mnist", SourceParams(root=str(directory), download=False), tmp_path / "out", tmp_path / "raw")


def test_known_content_checksum_catches_a_different_uncompressed_file(tmp_path):
    """Fashion-MNIST contents have known sha256s: a well-formed but different idx file is rejected."""
    _write_mnist_like(tmp_path / "root", compress=False)
    with pytest.raises(D.ChecksumError, match="train-images-idx3-ubyte: checksum mismatch"):
        D.prepare("fashion_mnist", SourceParams(root=str(tmp_path / "root"), download=False), tmp_path / "out",
                  tmp_path / "raw")


def test_missing_data_names_every_source_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(D.DataNotFoundError) as info:
        D.prepare("mnist", SourceParams(root=str(tmp_path / "empty"), download=False), tmp_path / "out",
                  tmp_path / "raw")
    message = str(info.value)
    assert "data.datasets.mnist.root = " in message and "earlier download in" in message
    assert "download: disabled" in message and "set data.datasets.mnist.root" in message
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(D.DataNotFoundError) as info:
        D.locate(D.SPECS["fashion_mnist"], SourceParams(download=False), tmp_path / "raw")
    message = str(info.value)
    assert "root: not set" in message and "Debian package dataset-fashion-mnist" in message
    assert "apt-get install dataset-fashion-mnist" in message


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_files_verify():
    spec = D.SPECS["fashion_mnist"]
    content = D.read_verified(FASHION / "t10k-labels-idx1-ubyte.gz", spec)
    labels = D.read_idx(content, "t10k-labels")
    assert labels.shape == (10000,) and hashlib.sha256(content).hexdigest() == spec.sha256["t10k-labels-idx1-ubyte"]
    assert json.dumps(sorted(set(labels.tolist()))) == json.dumps(list(range(10)))


def test_validation_split_is_stratified_seeded_and_disjoint():
    train = D.Split(torch.arange(1000, dtype=torch.uint8).reshape(-1, 1, 1, 1).repeat(1, 1, 2, 2),
                    torch.tensor([0] * 500 + [1] * 300 + [2] * 200))
    train.pixels = torch.arange(1000).reshape(-1, 1, 1, 1)  # unique ids to check disjointness
    kept, val = D.hold_out(train, 100, seed=3)
    assert len(val.labels) == 100 and len(kept.labels) == 900
    assert torch.bincount(val.labels).tolist() == [50, 30, 20]  # each class in proportion
    assert not set(val.pixels.flatten().tolist()) & set(kept.pixels.flatten().tolist())
    again, val2 = D.hold_out(train, 100, seed=3)
    assert torch.equal(val.pixels, val2.pixels) and not torch.equal(D.hold_out(train, 100, seed=4)[1].pixels,
                                                                     val.pixels)
    odd = D.hold_out(train, 7, seed=0)[1]  # 3.5 / 2.1 / 1.4: largest remainders get the extra image
    assert torch.bincount(odd.labels, minlength=3).tolist() == [4, 2, 1]
    with pytest.raises(D.ParamsError, match="data.datasets.x.val_size: 1000 leaves no training image"):
        D.hold_out(train, 1000, seed=0, where="data.datasets.x.val_size")


def test_prepared_splits_never_share_an_image(tmp_path):
    params = SyntheticParams(train_size=200, val_size=40, test_size=50, shape=(1, 8, 8), classes=4, noise=0.5)
    meta, _ = D.prepare("synthetic", params, tmp_path, tmp_path / "raw")
    prepared = D.load_prepared(tmp_path)
    assert (meta["train_size"], meta["val_size"], meta["test_size"]) == (160, 40, 50)
    rows = {s: {tuple(r) for r in prepared.split(s)[0].flatten(1).tolist()} for s in D.SPLITS}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
