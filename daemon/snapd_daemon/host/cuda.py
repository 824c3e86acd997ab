"""The CUDA driver's process checkpoint API (libcuda.so.1), through ctypes.

The library is loaded on first use, once, under a lock; importing this module
never touches it, so it imports on machines without a GPU. Every call targets
another process by pid and needs no ``cuInit`` in the calling process.

Layouts follow cuda.h of CUDA 12.8 / 13.0 (driver r570 / r580); each argument
struct is 64 bytes. GPU remapping on restore (``gpuPairs``) needs r580, which
reports driver API version 13000.
"""

from __future__ import annotations

import ctypes
import enum
import os
import threading
from collections.abc import Callable, Iterable, Sequence

LIBRARY = "libcuda.so.1"
# The first driver branch with the checkpoint API, and its cuDriverGetVersion.
MIN_DRIVER_BRANCH = 570
MIN_DRIVER_API = 12080
UPGRADE = f"upgrade the NVIDIA driver to {MIN_DRIVER_BRANCH} or newer"
GPU_REMAP_MIN_DRIVER = 13000
UUID_BYTES = 16

# What cuCheckpointProcessGetState answers for a pid that holds no CUDA state:
# CUDA_ERROR_NOT_INITIALIZED, CUDA_ERROR_OPERATING_SYSTEM, CUDA_ERROR_NOT_FOUND,
# CUDA_ERROR_NOT_SUPPORTED.
_NO_CUDA_STATE = frozenset({3, 304, 500, 801})
_NVIDIA_DEVICE = "/dev/nvidia"


class CudaState(enum.IntEnum):
    """CUprocessState; CHECKPOINTING and RESTORING come only from drivers newer than r580."""

    RUNNING = 0
    LOCKED = 1
    CHECKPOINTED = 2
    FAILED = 3
    CHECKPOINTING = 4
    RESTORING = 5


class CudaUnavailable(Exception):
    """The checkpoint API cannot be used on this host; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"CUDA checkpoint API unavailable: {reason}")


class CudaDriverError(Exception):
    """A driver call returned an error CUresult.

    ``call`` is the driver function, ``pid`` its target (None for calls that
    take none), ``code`` the CUresult, ``name`` its CUDA_ERROR_* name and
    ``description`` the driver's text for it.
    """

    def __init__(self, call: str, pid: int | None, code: int, name: str, description: str) -> None:
        self.call = call
        self.pid = pid
        self.code = code
        self.name = name
        self.description = description
        target = call if pid is None else f"{call}(pid {pid})"
        super().__init__(f"{target} failed: {name} ({description})")


class _LockArgs(ctypes.Structure):
    _fields_ = [
        ("timeoutMs", ctypes.c_uint),
        ("reserved0", ctypes.c_uint),
        ("reserved1", ctypes.c_uint64 * 7),
    ]


class _Uuid(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_ubyte * UUID_BYTES)]


class _GpuPair(ctypes.Structure):
    _fields_ = [("oldUuid", _Uuid), ("newUuid", _Uuid)]


class _RestoreArgs(ctypes.Structure):
    _fields_ = [
        ("gpuPairs", ctypes.POINTER(_GpuPair)),
        ("gpuPairsCount", ctypes.c_uint),
        ("reserved", ctypes.c_char * (52 - ctypes.sizeof(ctypes.c_void_p))),
        ("reserved1", ctypes.c_uint64),
    ]


for _struct, _size in ((_LockArgs, 64), (_RestoreArgs, 64), (_GpuPair, 2 * UUID_BYTES)):
    if ctypes.sizeof(_struct) != _size:
        raise ImportError(f"{_struct.__name__} is {ctypes.sizeof(_struct)} bytes, cuda.h has {_size}")

_INT_P = ctypes.POINTER(ctypes.c_int)
_STR_P = ctypes.POINTER(ctypes.c_char_p)
_SIGNATURES: dict[str, list[type]] = {
    "cuDriverGetVersion": [_INT_P],
    "cuGetErrorName": [ctypes.c_int, _STR_P],
    "cuGetErrorString": [ctypes.c_int, _STR_P],
    "cuCheckpointProcessLock": [ctypes.c_int, ctypes.POINTER(_LockArgs)],
    "cuCheckpointProcessCheckpoint": [ctypes.c_int, ctypes.c_void_p],
    "cuCheckpointProcessRestore": [ctypes.c_int, ctypes.POINTER(_RestoreArgs)],
    "cuCheckpointProcessUnlock": [ctypes.c_int, ctypes.c_void_p],
    "cuCheckpointProcessGetState": [ctypes.c_int, _INT_P],
}

_load_lock = threading.Lock()
_functions: dict[str, Callable[..., int]] | None = None
_load_error: str | None = None


def _load() -> dict[str, Callable[..., int]]:
    """Open libcuda and type its functions; raises CudaUnavailable."""
    try:
        library = ctypes.CDLL(LIBRARY)
    except OSError as exc:
        raise CudaUnavailable(f"cannot load {LIBRARY} ({exc}); is the NVIDIA driver installed?") from None
    missing = [name for name in _SIGNATURES if not hasattr(library, name)]
    if missing:
        raise CudaUnavailable(
            f"{LIBRARY} lacks {', '.join(missing)}; the checkpoint API needs NVIDIA driver "
            f"r{MIN_DRIVER_BRANCH} or newer"
        )
    functions: dict[str, Callable[..., int]] = {}
    for name, argtypes in _SIGNATURES.items():
        function = getattr(library, name)
        function.argtypes = argtypes
        function.restype = ctypes.c_int
        functions[name] = function
    return functions


def _driver() -> dict[str, Callable[..., int]]:
    """The typed driver functions, loading them on first use; raises CudaUnavailable."""
    global _functions, _load_error
    with _load_lock:
        if _functions is None and _load_error is None:
            try:
                _functions = _load()
            except CudaUnavailable as exc:
                _load_error = exc.reason
        if _functions is None:
            raise CudaUnavailable(_load_error or "not loaded")
        return _functions


def _error_text(functions: dict[str, Callable[..., int]], code: int) -> tuple[str, str]:
    """(CUDA_ERROR_* name, description) of a CUresult, with fallbacks for unknown codes."""
    name = ctypes.c_char_p()
    text = ctypes.c_char_p()
    if functions["cuGetErrorName"](code, ctypes.byref(name)) != 0 or not name.value:
        return f"CUresult {code}", "unknown error code"
    if functions["cuGetErrorString"](code, ctypes.byref(text)) != 0 or not text.value:
        return name.value.decode(errors="replace"), "no description"
    return name.value.decode(errors="replace"), text.value.decode(errors="replace")


def _check(call: str, pid: int | None, *args: object) -> None:
    """Call a driver function; raises CudaDriverError unless it returns CUDA_SUCCESS."""
    functions = _driver()
    code = functions[call](*args)
    if code != 0:
        name, description = _error_text(functions, code)
        raise CudaDriverError(call, pid, code, name, description)


def available() -> bool:
    """True if libcuda.so.1 loads and exports the checkpoint API."""
    try:
        _driver()
    except CudaUnavailable:
        return False
    return True


def driver_version() -> int:
    """The driver's CUDA API version (1000 * major + 10 * minor; r580 gives 13000)."""
    version = ctypes.c_int()
    _check("cuDriverGetVersion", None, ctypes.byref(version))
    return version.value


def state(pid: int) -> CudaState | None:
    """The CUDA checkpoint state of pid, or None if it holds no CUDA state (or is gone)."""
    functions = _driver()
    value = ctypes.c_int()
    code = functions["cuCheckpointProcessGetState"](pid, ctypes.byref(value))
    if code in _NO_CUDA_STATE or (code != 0 and not os.path.exists(f"/proc/{pid}")):
        return None
    if code != 0:
        name, description = _error_text(functions, code)
        raise CudaDriverError("cuCheckpointProcessGetState", pid, code, name, description)
    return CudaState(value.value)


def lock(pid: int, timeout_ms: int) -> None:
    """RUNNING -> LOCKED: wait for pid's CUDA work to finish and block new calls.

    timeout_ms 0 waits without limit; otherwise the driver gives up with
    CUDA_ERROR_TIMEOUT and leaves the process running.
    """
    if not 0 <= timeout_ms <= 0xFFFFFFFF:
        raise ValueError(f"timeout_ms {timeout_ms} is outside 0..{0xFFFFFFFF}")
    args = _LockArgs(timeoutMs=timeout_ms)
    _check("cuCheckpointProcessLock", pid, pid, ctypes.byref(args))


def checkpoint(pid: int) -> None:
    """LOCKED -> CHECKPOINTED: copy pid's GPU memory into its host memory and release the GPU."""
    _check("cuCheckpointProcessCheckpoint", pid, pid, None)


def restore(pid: int, gpu_pairs: Sequence[tuple[bytes, bytes]] | None = None) -> None:
    """CHECKPOINTED -> LOCKED: reacquire the GPU and copy pid's memory back.

    gpu_pairs maps the 16-byte UUID of each checkpointed GPU to the GPU to
    restore onto (driver r580+); None or empty restores onto the same GPUs.
    """
    if not gpu_pairs:
        _check("cuCheckpointProcessRestore", pid, pid, None)
        return
    version = driver_version()
    if version < GPU_REMAP_MIN_DRIVER:
        raise CudaUnavailable(
            f"restoring onto other GPUs needs driver API {GPU_REMAP_MIN_DRIVER} (r580), this driver has {version}"
        )
    pairs = (_GpuPair * len(gpu_pairs))()
    for pair, (old, new) in zip(pairs, gpu_pairs, strict=True):
        if len(old) != UUID_BYTES or len(new) != UUID_BYTES:
            raise ValueError(f"GPU UUIDs must be {UUID_BYTES} bytes, got {len(old)} and {len(new)}")
        ctypes.memmove(pair.oldUuid.bytes, old, UUID_BYTES)
        ctypes.memmove(pair.newUuid.bytes, new, UUID_BYTES)
    args = _RestoreArgs(gpuPairs=pairs, gpuPairsCount=len(gpu_pairs))
    _check("cuCheckpointProcessRestore", pid, pid, ctypes.byref(args))


def unlock(pid: int) -> None:
    """LOCKED -> RUNNING: let pid make CUDA calls again."""
    _check("cuCheckpointProcessUnlock", pid, pid, None)


class CudaStuck(Exception):
    """pid is in a CUDA state that restore/unlock cannot leave (failed, or mid-transition)."""

    def __init__(self, pid: int, state: CudaState) -> None:
        self.pid = pid
        self.state = state
        super().__init__(f"pid {pid} is in CUDA state {state.name.lower()}, which restore/unlock cannot leave")


def thaw(pid: int) -> None:
    """Bring pid back to running from wherever a checkpoint left it, by its state
    as the driver reports it now: checkpointed -> restore -> unlock, locked ->
    unlock; running, or no CUDA state, is left alone (so thawing twice is safe).
    Raises CudaDriverError, or CudaStuck for any other state."""
    current = state(pid)
    if current == CudaState.CHECKPOINTED:
        restore(pid)
        current = CudaState.LOCKED
    if current == CudaState.LOCKED:
        unlock(pid)
    elif current not in (None, CudaState.RUNNING):
        raise CudaStuck(pid, current)


def gpu_uuid_bytes(text: str) -> bytes:
    """The 16 bytes of a GPU UUID written as NVML and nvidia-smi do ("GPU-xxxxxxxx-xxxx-...")."""
    digits = text.strip().removeprefix("GPU-").replace("-", "")
    raw = bytes.fromhex(digits)
    if len(raw) != UUID_BYTES:
        raise ValueError(f"{text!r} is not a GPU UUID")
    return raw


def uses_nvidia_device(pid: int) -> bool | None:
    """Whether pid has a /dev/nvidia* fd open or mapped; None if /proc does not let us see.

    A vanished pid counts as False.
    """
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(_NVIDIA_DEVICE):
                    return True
            except FileNotFoundError:
                continue
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
            return any(_NVIDIA_DEVICE in line for line in maps)
    except PermissionError:
        return None
    except (FileNotFoundError, ProcessLookupError):
        return False


def frozen(pids: Iterable[int]) -> list[tuple[int, CudaState]]:
    """Those of pids whose CUDA state is anything but running, with that state.

    A pid with /dev/nvidia* files raises like ``state``; for one without (the
    common case: plain CPU processes, and checkpointed CUDA processes), an
    error from the driver means it holds no CUDA state.
    """
    found = []
    for pid in pids:
        try:
            current = state(pid)
        except CudaDriverError:
            if uses_nvidia_device(pid) is False:
                continue
            raise
        if current not in (None, CudaState.RUNNING):
            found.append((pid, current))
    return found


def cuda_pids(pids: Iterable[int]) -> list[int]:
    """Those of pids that hold CUDA state, as the driver says, in the given order.

    Only pids with a /dev/nvidia* fd or mapping (or whose /proc entries cannot
    be read) are asked. A CHECKPOINTED process has released its device files,
    so it is not reported: callers restoring one must know its pid already.
    """
    return [pid for pid in pids if uses_nvidia_device(pid) is not False and state(pid) is not None]


def nvidia_mapped_without_context(pids: Iterable[int]) -> list[int]:
    """Those of pids that open or map /dev/nvidia* but hold no CUDA state.

    Typically a child forked from a CUDA process without exec; CRIU cannot dump
    it ("Can't handle non-regular mapping").
    """
    return [pid for pid in pids if uses_nvidia_device(pid) and state(pid) is None]
