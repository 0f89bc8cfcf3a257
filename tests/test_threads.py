"""pipeline.threads: one thread for small work, the cores for large convolutions, env overrides."""

import pytest
import torch

from pipeline.threads import configure_threads, threads_for


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    monkeypatch.delenv("TTFS_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("model,batch", [("fc2", 8), ("fc16", 256), ("lenet5", 128), ("vgg16", 4)])
def test_small_work_gets_one_thread(model, batch):
    assert threads_for(model, batch, cores=16)[0] == 1


def test_large_convolutions_share_the_cores_between_workers():
    assert threads_for("vgg16", 32, cores=8)[0] == 8
    assert threads_for("vgg16_places365", 64, workers=2, cores=8)[0] == 4
    assert threads_for("vgg16", 32, workers=16, cores=8)[0] == 1


def test_busy_cores_are_left_out():
    assert threads_for("vgg16", 32, cores=8, busy=5.2)[0] == 3
    assert threads_for("vgg16", 32, cores=2, busy=3.0)[0] == 1
    assert threads_for("lenet5", 128, cores=8, busy=0.0)[0] == 1


def test_load_aware_configuration_reads_the_load(monkeypatch):
    monkeypatch.setattr("pipeline.threads.load_average", lambda: 3.0)
    assert configure_threads("vgg16", 32, cores=4, load_aware=True).intra_op == 1
    setting = configure_threads("vgg16", 32, cores=4)
    assert setting.intra_op == 4 and setting.load == 3.0


def test_configure_sets_and_reports(monkeypatch):
    setting = configure_threads("lenet5", 128, cores=4)
    assert torch.get_num_threads() == setting.intra_op == 1
    assert setting.source == "policy" and setting.cores == 4 and "lenet5" in setting.reason
    assert setting.as_dict()["threads.intra_op"] == 1
    setting = configure_threads("vgg16", 32, cores=2)
    assert torch.get_num_threads() == setting.intra_op == 2


@pytest.mark.parametrize("var", ["TTFS_THREADS", "OMP_NUM_THREADS"])
def test_environment_overrides(monkeypatch, var):
    monkeypatch.setenv(var, "3")
    setting = configure_threads("fc2", 8, cores=4)
    assert setting.intra_op == torch.get_num_threads() == 3 and setting.source == var


def test_ttfs_threads_wins_over_omp(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setenv("TTFS_THREADS", "1")
    assert configure_threads("vgg16", 32, cores=4).intra_op == 1


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_environment_value_is_named(monkeypatch, value):
    monkeypatch.setenv("TTFS_THREADS", value)
    with pytest.raises(ValueError, match="TTFS_THREADS"):
        configure_threads("fc2", 8)


def test_a_param_request_counts_unless_the_environment_says_otherwise(monkeypatch):
    setting = configure_threads("vgg16", 32, cores=4, requested=2)
    assert setting.intra_op == torch.get_num_threads() == 2 and setting.source == "param"
    monkeypatch.setenv("TTFS_THREADS", "1")
    assert configure_threads("vgg16", 32, cores=4, requested=2).source == "TTFS_THREADS"
