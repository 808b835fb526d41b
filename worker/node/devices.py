"""The compute devices a worker offers, found through NVML, torch.cuda, or the CPU.

With NVIDIA GPUs, NVML (``pynvml`` from nvidia-ml-py) gives each GPU's model, memory, UUID,
driver and compute capability; without NVML, ``torch.cuda`` gives what it can. Without a GPU the
worker offers its CPU as ``cpu`` devices (``cpu_slots`` of them, each with an equal share of host
memory) so the whole system runs anywhere. :func:`check_request` gates what a job may ask for.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from marketplace.errors import WorkerError

__all__ = [
    "DeviceInfo",
    "UtilizationSampler",
    "check_request",
    "cpu_model",
    "detect_devices",
    "host_memory_bytes",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One device: kind (``cuda``/``cpu``), index among its kind, model, memory and GPU details."""

    kind: str
    index: int
    model: str
    memory_bytes: int
    uuid: str = ""
    driver: str = ""
    compute_capability: str = ""


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_memory_bytes() -> int:
    """Total host memory from /proc/meminfo."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _nvml_devices() -> list[DeviceInfo]:
    import pynvml

    pynvml.nvmlInit()
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            found.append(
                DeviceInfo(
                    kind="cuda",
                    index=i,
                    model=name.decode() if isinstance(name, bytes) else str(name),
                    memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    driver=driver,
                    compute_capability=f"{major}.{minor}",
                )
            )
        return found
    finally:
        pynvml.nvmlShutdown()


def _torch_devices() -> list[DeviceInfo]:
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        found.append(
            DeviceInfo(
                "cuda",
                i,
                props.name,
                int(props.total_memory),
                uuid=str(getattr(props, "uuid", "")),
                compute_capability=f"{props.major}.{props.minor}",
            )
        )
    return found


def detect_devices(cpu_slots: int = 1, *, use_gpus: bool = True) -> list[DeviceInfo]:
    """Return the GPUs (NVML first, torch.cuda second) or, when there are none, ``cpu_slots`` CPU devices."""
    if use_gpus:
        try:
            gpus = _nvml_devices()
        except Exception as exc:  # NVML missing, no driver, no GPU: all raise their own types
            log.debug("NVML unavailable: %s", exc)
            gpus = []
        if not gpus:
            try:
                gpus = _torch_devices()
            except Exception as exc:  # a broken CUDA install raises from deep inside torch
                log.debug("torch.cuda unavailable: %s", exc)
        if gpus:
            return gpus
    slots = max(1, cpu_slots)
    share = host_memory_bytes() // slots
    model = cpu_model()
    return [DeviceInfo("cpu", i, model, share) for i in range(slots)]


def check_request(devices: Sequence[DeviceInfo], kind: str, count: int, min_memory_bytes: int) -> None:
    """Raise :class:`WorkerError` (``FAILED_PRECONDITION``) when no allocation could ever meet the request."""
    matching = [d for d in devices if d.kind == kind]
    if not matching:
        offered = ", ".join(sorted({d.kind for d in devices})) or "none"
        raise WorkerError(f"this worker has no {kind} devices (it offers: {offered})", code="FAILED_PRECONDITION")
    if count > len(matching):
        raise WorkerError(
            f"job asks for {count} {kind} devices; this worker has {len(matching)}", code="FAILED_PRECONDITION"
        )
    big_enough = [d for d in matching if d.memory_bytes >= min_memory_bytes]
    if len(big_enough) < count:
        most = max(d.memory_bytes for d in matching)
        raise WorkerError(
            f"job asks for {count} {kind} devices with {min_memory_bytes / 2**30:.1f} GiB each; "
            f"this worker's largest has {most / 2**30:.1f} GiB",
            code="FAILED_PRECONDITION",
        )


class UtilizationSampler:
    """Samples NVML utilization of some GPUs once a second; :meth:`stop` returns the mean percent."""

    def __init__(self, indices: Sequence[int], interval_s: float = 1.0) -> None:
        self._indices = list(indices)
        self._interval = interval_s
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> UtilizationSampler:
        """Start sampling in a background thread (a no-op when NVML is unavailable)."""
        if self._indices:
            self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no NVML: nothing to sample
            return
        try:
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in self._indices]
            while not self._stop.wait(self._interval):
                rates = [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
                self._samples.append(sum(rates) / len(rates))
        finally:
            pynvml.nvmlShutdown()

    def stop(self) -> float | None:
        """Stop sampling; return the mean utilization in percent, or None without samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return sum(self._samples) / len(self._samples) if self._samples else None
