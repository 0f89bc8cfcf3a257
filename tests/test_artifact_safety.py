"""Files the pipeline reads back (models, checkpoints, prepared data) are verified, never trusted.

Damage of any kind (flipped bytes, a torn file, a hand-edited meta.json, a planted pickle) must be an
ArtifactError whose message names the file and the fix; loading must never run code.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from pipeline import artifacts, checkpoint
from pipeline import data as D
from pipeline import params as P
from pipeline.errors import ArtifactError
from pipeline.params import FinetuneParams, PretrainParams, SyntheticParams
from pipeline.training import fit, optimizer_for
from stages import convert as convert_stage
from ttfs import convert, export
from ttfs.train import TensorBatches
from ttfs.zoo import create_model


class _Planted:
    """Unpickling this creates ``marker``: a stand-in for any code a planted file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class _Run:
    resumed, run_id = True, "stub"

    def log_metrics(self, values: dict, step: int = 0) -> None:
        pass


def _flip(path, at=None, n=16):
    """Invert ``n`` bytes from offset ``at`` (default: the middle of the file; negative: from the end)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at % len(data)
    data[at:at + n] = bytes(b ^ 0xFF for b in data[at:at + n])
    path.write_bytes(bytes(data))


def _relu():
    torch.manual_seed(0)
    return create_model("fc2", in_shape=(1, 28, 28), num_classes=4, width=32).eval()


def _files(tmp_path):
    """{kind: (path, loader)} for relu.pt, snn.pt and a real training checkpoint, all freshly written."""
    models = tmp_path / "models" / "exp"
    relu = _relu()
    artifacts.save_relu(models / "relu.pt", relu, {"k": 1})
    x = torch.rand(64, 1, 28, 28)
    snn = convert(relu, x)
    artifacts.save_snn(models / "snn.pt", snn, {"k": 2})
    ckpt = checkpoint.path_for(tmp_path, "exp", "finetune", "abc")
    y = torch.randint(4, (64,))
    fit(snn, TensorBatches(x, y, 16), TensorBatches(x, y, 64, shuffle=False), FinetuneParams(epochs=1, batch_size=16),
        ckpt, None, _Run(), "t")
    return {"relu": (models / "relu.pt", artifacts.load_relu), "snn": (models / "snn.pt", artifacts.load_snn),
            "checkpoint": (ckpt, checkpoint.load)}


FIXES = {"relu": "dvc repro -f pretrain@exp", "snn": "dvc repro -f finetune@exp", "checkpoint": "delete it"}


@pytest.fixture
def files(tmp_path):
    return _files(tmp_path)


def _refused(path, load, fix) -> str:
    with pytest.raises(ArtifactError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and fix in message and "\n" not in message, message
    return message


def test_planted_checkpoint_cannot_run_code(tmp_path):
    path = checkpoint.path_for(tmp_path, "exp", "finetune", "abc")
    path.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"model": _Planted(marker), "history": []}, path)
    _refused(path, checkpoint.load, "delete it")
    assert not marker.exists()


@pytest.mark.parametrize("kind", FIXES)
def test_flipped_bytes_are_detected(files, kind):
    path, load = files[kind]
    _flip(path)
    _refused(path, load, FIXES[kind])


@pytest.mark.parametrize("kind", FIXES)
@pytest.mark.parametrize("damage", ["truncated", "directory_flipped"])
def test_damaged_end_is_detected(files, kind, damage):
    """The zip directory at the end: torch.load fails in many ways, each one an ArtifactError."""
    path, load = files[kind]
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
    else:
        _flip(path, -100)
    _refused(path, load, FIXES[kind])


def test_files_without_a_checksum_are_refused(tmp_path):
    """Files of an older pipeline version carry no checksum: regenerating them is what the message says."""
    relu = _relu()
    path = tmp_path / "models" / "exp" / "relu.pt"
    path.parent.mkdir(parents=True)
    torch.save({"format": "ttfs-relu", "config": dict(relu.config), "state_dict": relu.state_dict(),
                "lineage": {}}, path)
    assert "no content checksum" in _refused(path, artifacts.load_relu, FIXES["relu"])


def test_a_model_file_of_the_wrong_kind_is_refused(files):
    path, _ = files["snn"]
    assert "not a ttfs-relu file" in _refused(path, artifacts.load_relu, FIXES["snn"])


def _same(a, b) -> bool:
    """Equal in type, structure and every value (tensors: dtype, shape and elements)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return type(a) is type(b) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def test_round_trips_are_bit_exact(tmp_path, files):
    relu = _relu()
    artifacts.save_relu(tmp_path / "relu.pt", relu, {"k": 1})
    loaded, lineage = artifacts.load_relu(tmp_path / "relu.pt")
    assert lineage == {"k": 1} and _same(loaded.state_dict(), relu.state_dict())
    snn = convert(relu, torch.rand(64, 1, 28, 28))
    artifacts.save_snn(tmp_path / "snn.pt", snn, {"k": 2})
    (meta, arrays), (meta2, arrays2) = export.to_dict(snn), export.to_dict(artifacts.load_snn(tmp_path / "snn.pt")[0])
    assert meta == meta2 and list(arrays) == list(arrays2)
    assert all(v.dtype == arrays2[k].dtype and v.tobytes() == arrays2[k].tobytes() for k, v in arrays.items())
    # a checkpoint is plain data (weights_only=True reads it back) and comes back bit for bit
    opt, scheduler = optimizer_for(relu, PretrainParams(), 1)
    relu(torch.rand(4, 1, 28, 28)).sum().backward()
    opt.step()
    scheduler.step()
    state = {"model": relu.state_dict(), "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": checkpoint.rng_state({"batches": torch.Generator().manual_seed(1)}),
             "history": [{"epoch": 1, "train_loss": 0.25, "lr": 1e-3}], "run_id": "r"}
    checkpoint.save(tmp_path / "c.pt", state)
    assert _same(checkpoint.load(tmp_path / "c.pt"), state)
    history = checkpoint.load(files["checkpoint"][0])["history"]  # what fit() writes: rows of plain numbers
    assert history and all(type(v) in (int, float) for row in history for v in row.values())



def test_sigterm_during_a_checkpoint_write_waits_for_the_write(tmp_path, monkeypatch):
    """SIGTERM arriving inside torch.save (a real stage's race, seen in CI) is held until the file is
    complete and renamed, then surfaces as the runner's KeyboardInterrupt, not as a zip-writer error."""
    import os
    import signal

    from pipeline.errors import raise_interrupt

    real_save = torch.save

    def save_hit_mid_write(obj, f):
        os.kill(os.getpid(), signal.SIGTERM)
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_hit_mid_write)
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            checkpoint.save(tmp_path / "c.pt", {"history": [{"epoch": 1}]})
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert checkpoint.load(tmp_path / "c.pt") == {"history": [{"epoch": 1}]}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]

# -- prepared data ---------------------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path):
    directory = tmp_path / "synthetic"
    D.prepare("synthetic", SyntheticParams(train_size=32, val_size=8, test_size=16, shape=(1, 8, 8), classes=3),
              directory, tmp_path / "raw")
    return directory


def _edit_meta(directory, edit):
    meta = json.loads((directory / "meta.json").read_text())
    edit(meta)
    (directory / "meta.json").write_text(json.dumps(meta))


def _prepared_refused(directory, name) -> str:
    with pytest.raises(ArtifactError) as info:
        D.load_prepared(directory)
    message = str(info.value)
    assert str(directory / name) in message and "dvc repro prepare@synthetic" in message and "\n" not in message
    return message


@pytest.mark.parametrize("edit", [
    lambda m: m.clear(),
    lambda m: m.pop("in_shape"),
    lambda m: m.update(in_shape="1x8x8"),
    lambda m: m.update(num_classes=3.5),
    lambda m: m["input_encoding"].update(mean="0"),
    lambda m: m["input_encoding"].update(std=[1.0, 1.0]),
    lambda m: m.update(sha256=["a", "b"]),
    lambda m: m.update(p=None),
    lambda m: m.update(train_size=31),
    lambda m: m.update(in_shape=[1, 4, 16]),
], ids=["empty", "missing", "shape_str", "float_classes", "mean_str", "std_len", "sha_list", "p_null",
        "size", "shape"])
def test_corrupt_meta_json_is_an_artifact_error(prepared, edit):
    _edit_meta(prepared, edit)
    _prepared_refused(prepared, "meta.json")


def test_meta_json_that_is_not_json(prepared):
    path = prepared / "meta.json"
    path.write_text(path.read_text()[:40])
    _prepared_refused(prepared, "meta.json")
    path.write_bytes(b"\xff\xfe")
    _prepared_refused(prepared, "meta.json")


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_damaged_prepared_tensors(prepared, damage):
    path = prepared / "train.pt"
    if damage == "flipped":
        _flip(path)
    else:
        path.write_bytes(path.read_bytes()[:100])
    _prepared_refused(prepared, "train.pt")


def test_planted_prepared_tensors_are_refused(prepared, tmp_path):
    """Even with a matching checksum in meta.json the file is loaded with weights_only: no code runs."""
    marker = tmp_path / "pwned"
    torch.save({"pixels": _Planted(marker), "labels": torch.zeros(32, dtype=torch.int64)}, prepared / "train.pt")
    _edit_meta(prepared, lambda m: m["sha256"].update({"train.pt": D.sha256_file(prepared / "train.pt")}))
    _prepared_refused(prepared, "train.pt")
    assert not marker.exists()


# -- a stage on a damaged input --------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_convert_stage_on_a_damaged_relu_file_fails_cleanly(tmp_path, monkeypatch, capsys, tiny_params, damage):
    """The runner turns the ArtifactError into one paragraph and exit status 1, before any output is written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    params = P.load("params.yaml")
    D.prepare("synthetic", params.dataset("synthetic"), artifacts.prepared_dir("synthetic"), tmp_path / "raw")
    path = artifacts.Paths("tiny_fc2").relu
    artifacts.save_relu(path, _relu(), {"pretrain_params_hash": "x"})
    if damage == "flipped":
        _flip(path)
    else:
        path.write_bytes(path.read_bytes()[:-200])
    assert convert_stage.main(["tiny_fc2"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and not artifacts.Paths("tiny_fc2").converted.exists()
    assert re.search(rf"convert tiny_fc2 failed: {re.escape(str(path))}\b.*dvc repro -f pretrain@tiny_fc2",
                     err), err
