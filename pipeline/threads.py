"""How many CPU threads torch should use for a piece of training work.

Small-batch work (FC networks, LeNet-sized convolutions) spends its time in many small kernels: extra
threads only add synchronisation, and with PyTorch's default (one thread per core) two such processes
on one machine oversubscribe the cores and run several times slower than alone. Large convolutions
(VGG-sized, batch >= 8) do profit from every core, as long as no other worker needs them.

    from pipeline.threads import configure_threads
    setting = configure_threads("lenet5", batch_size=128)       # -> 1 thread
    setting = configure_threads("vgg16", batch_size=32)         # -> all available cores
    setting = configure_threads("vgg16", batch_size=32, workers=2)  # -> cores // 2
    run.log_params(setting.as_dict())

``TTFS_THREADS`` (ours) or else ``OMP_NUM_THREADS`` (the usual one) in the environment override the
choice; next comes an explicit ``requested`` count (an experiment's ``threads`` param). The environment
wins because it describes the machine (N queued jobs on it), the param only the experiment.
``load_aware=True`` also leaves out the cores other processes keep busy (1-minute load average): on a
shared two-core machine a VGG16 step with two threads took 2.8 s against 1.25 s with one while other
work ran. It is off by default because the thread count can change the last bits of
convolution results, and a pipeline stage should not depend on the machine's load.

Inter-op threads are set to 1 (training runs no parallel graph branches); torch allows that only
before its first parallel work, later it is left as it is and reported.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

SMALL_MODELS = ("fc", "lenet")  # name prefixes of models whose kernels are too small to split
LARGE_MIN_BATCH = 8  # a VGG-sized convolution profits from threads from this batch size on
ENV_VARS = ("TTFS_THREADS", "OMP_NUM_THREADS")


@dataclass(frozen=True)
class ThreadSetting:
    intra_op: int  # torch.get_num_threads() after the call
    inter_op: int  # torch.get_num_interop_threads() after the call
    cores: int  # cores this process may run on
    workers: int
    load: float | None  # 1-minute load average when the setting was made
    source: str  # "TTFS_THREADS", "OMP_NUM_THREADS", "param" or "policy"
    reason: str

    def as_dict(self, prefix: str = "threads.") -> dict:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def available_cores() -> int:
    """Cores this process may use (CPU affinity, e.g. from taskset or a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _env_threads() -> tuple[int, str] | None:
    for name in ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a number of threads") from None
            if n < 1:
                raise ValueError(f"{name}={value!r}: need at least 1 thread")
            return n, name
    return None


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def threads_for(model: str, batch_size: int, workers: int = 1, cores: int | None = None,
                busy: float = 0.0) -> tuple[int, str]:
    """(intra-op threads, reason) for training ``model`` at ``batch_size`` with ``workers`` processes.

    ``busy`` cores (other processes' load) are not counted as available.
    """
    cores = available_cores() if cores is None else max(1, int(cores))
    workers = max(1, int(workers))
    name = model.lower()
    if name.startswith(SMALL_MODELS):
        return 1, f"{model}: small kernels, one thread is fastest"
    if batch_size < LARGE_MIN_BATCH:
        return 1, f"batch size {batch_size} < {LARGE_MIN_BATCH}: kernels too small to split"
    free = max(1, cores - int(round(busy)))
    share = max(1, free // workers)
    why = f"{cores} cores" + (f" ({free} not busy)" if free < cores else "")
    return share, f"{model} at batch {batch_size}: large convolutions, {why} / {workers} worker(s)"


def configure_threads(model: str, batch_size: int, workers: int = 1, cores: int | None = None,
                      load_aware: bool = False, requested: int | None = None) -> ThreadSetting:
    """Set torch's intra-op and inter-op threads for this work (see the module docstring); returns what it set."""
    cores = available_cores() if cores is None else max(1, int(cores))
    workers = max(1, int(workers))
    load = load_average()
    override = _env_threads()
    if override is not None:
        intra, source = override
        reason = f"{source}={intra} in the environment"
    elif requested is not None:
        intra, source = int(requested), "param"
        reason = f"threads: {intra} in the params"
    else:
        busy = (load or 0.0) if load_aware else 0.0
        intra, reason = threads_for(model, batch_size, workers, cores, busy)
        source = "policy"
    torch.set_num_threads(intra)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only possible before torch's first inter-op parallel work
        pass
    return ThreadSetting(torch.get_num_threads(), torch.get_num_interop_threads(), cores, workers, load, source,
                         reason)
