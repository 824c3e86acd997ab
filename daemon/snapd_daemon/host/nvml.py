"""NVML (nvidia-ml-py), read in one place: one init, one query, one shutdown.

Everything snapd wants from NVML (driver version, GPUs, their free memory,
which processes hold contexts where, and how much memory they use) comes from one ``read`` call,
so no caller opens or closes NVML itself. ``read`` never raises: a host
without the driver or the module gives an empty ``NvmlView`` whose ``error``
says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NvmlDevice:
    index: int
    name: str
    uuid: str
    memory_bytes: int
    mig_enabled: bool
    # pid -> GPU memory it uses on this device (bytes; 0 when NVML does not say)
    compute: dict[int, int] = field(default_factory=dict)
    # memory no context holds now (NVML's free: total less every process's and the driver's use)
    free_bytes: int = 0


@dataclass(frozen=True)
class NvmlView:
    driver_version: str = ""
    devices: tuple[NvmlDevice, ...] = ()
    # why the view is empty or the process lists are missing ("" when complete)
    error: str = ""


def read() -> NvmlView:
    """Driver version, devices and their compute processes, as NVML reports them now."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # NVML raises its own error classes, or ImportError without the module
        return NvmlView(error=f"no NVIDIA driver reachable ({exc})")
    try:
        devices = []
        error = ""
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                mig = bool(pynvml.nvmlDeviceGetMigMode(handle)[0])
            except pynvml.NVMLError:
                mig = False
            compute: dict[int, int] = {}
            try:
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    compute[proc.pid] = compute.get(proc.pid, 0) + int(proc.usedGpuMemory or 0)
            except pynvml.NVMLError as exc:
                error = f"compute processes of GPU {i} unknown ({exc})"
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(NvmlDevice(i, pynvml.nvmlDeviceGetName(handle), pynvml.nvmlDeviceGetUUID(handle),
                                      int(memory.total), mig, compute, int(memory.free)))
        return NvmlView(pynvml.nvmlSystemGetDriverVersion(), tuple(devices), error)
    except pynvml.NVMLError as exc:
        return NvmlView(error=f"NVML query failed ({exc})")
    finally:
        pynvml.nvmlShutdown()
