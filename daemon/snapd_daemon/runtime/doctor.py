"""Host diagnosis for `snapd status`: can this host checkpoint and restore?

A check fails (``ok`` False, `snapd status` exits 1) only when something the daemon must
do cannot be done; one that works with a gap the operator should know of is a warning
(``ok`` and ``warning``): restore limits whose controller is missing, no GPU driver on a
host whose configuration does not say it has a GPU (``gpu_required``: then it fails).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from snapd_daemon.criu.binary import self_check
from snapd_daemon.errors import SnapdError
from snapd_daemon.host import cuda, nvml
from snapd_daemon.host.cgroups import CgroupRoot
from snapd_daemon.runtime.settings import Runtime

MIN_FREE_BYTES = 8 << 30


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    warning: bool = False


@dataclass
class Diagnosis:
    kernel: str
    gpu_driver: str
    checks: list[CheckResult] = field(default_factory=list)


def _cgroup_v2() -> CheckResult:
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        controllers = root / "cgroup.controllers"
        if controllers.exists():
            ctrl = controllers.read_text().split()
            mode = "unified" if root == Path("/sys/fs/cgroup") else "hybrid"
            return CheckResult("cgroup-v2", True, f"{mode} at {root} (controllers there: {' '.join(ctrl) or 'none'}; "
                               "cgroup-limits says which limits restores can set)")
    return CheckResult("cgroup-v2", False, "no cgroup2 hierarchy mounted")


# The controllers restore's limits need, and the options each one serves.
LIMIT_CONTROLLERS = {"memory": "--memory-max", "cpu": "--cpu-max", "pids": "--pids-max",
                     "cpuset": "--cpuset-cpus/--cpuset-mems"}


def _cgroup_root(root: CgroupRoot) -> list[CheckResult]:
    """Where restores are placed, and which limits can be set there: a limit whose controller
    the root cannot have fails every restore asking for it, so that check warns (placement,
    checkpoint and restore work)."""
    if root.path is None:
        return [CheckResult("cgroup-root", False, "no cgroup2 hierarchy: restores cannot be placed in a cgroup")]
    exists = root.path.is_dir()
    # a root not made yet gets what its parent can delegate
    source = root.path if exists else root.path.parent
    ctrl = set((source / "cgroup.controllers").read_text().split())
    placed = CheckResult("cgroup-root", True, f"{root.path}" + ("" if exists else " (created on first use)"))
    missing = [name for name in LIMIT_CONTROLLERS if name not in ctrl]
    if not missing:
        return [placed, CheckResult("cgroup-limits", True, f"controllers {' '.join(LIMIT_CONTROLLERS)} available "
                                    "for restore limits")]
    options = ", ".join(LIMIT_CONTROLLERS[name] for name in missing)
    return [placed, CheckResult(
        "cgroup-limits", True,
        f"controller(s) {', '.join(missing)} not available at {source} (it has: {' '.join(sorted(ctrl)) or 'none'}): "
        f"restores with {options} fail (CgroupFailed); --cgroup placement works. On a hybrid host the limits live "
        "in cgroup v1, which snapd does not touch; elsewhere enable them in the parent's cgroup.subtree_control",
        warning=True)]


def _gpu_driver(required: bool) -> tuple[str, CheckResult]:
    """The driver and its GPUs; none reachable warns, or fails where the host is marked
    ``gpu_required`` (a GPU server whose driver did not load must not pass as healthy)."""
    view = nvml.read()
    if not view.driver_version:
        if required:
            return "", CheckResult("gpu-driver", False, f"{view.error}, but gpu_required is set: this host should "
                                   "have a GPU (check `nvidia-smi` and the driver's kernel module)")
        return "", CheckResult("gpu-driver", True, f"{view.error}; GPU checkpoints unavailable (set gpu_required "
                               "on GPU hosts to make this a failure)", warning=True)
    ok = int(view.driver_version.split(".")[0]) >= cuda.MIN_DRIVER_BRANCH
    detail = f"driver {view.driver_version}, {len(view.devices)} GPU(s): {', '.join(d.name for d in view.devices)}"
    if not ok:
        detail += f"; CUDA checkpointing needs driver >= {cuda.MIN_DRIVER_BRANCH}"
    return view.driver_version, CheckResult("gpu-driver", ok, detail)


def _store(rt: Runtime) -> CheckResult:
    """Fails while manifests sit in quarantine: their snapshots are not listed until someone acts."""
    q = rt.store.quarantine
    manifests, chunks = q.manifest_count(), len(q.chunk_ids())
    if manifests:
        return CheckResult("store", False, f"{manifests} manifest(s) failed their seal or did not parse and were "
                           f"moved to {q.manifests_dir} (a .error file beside each says why); their snapshots "
                           "cannot be restored (`snapd list` marks them damaged): pull or import an intact copy "
                           f"(or put one back into {rt.store.manifests.root} and restart the daemon), or delete the "
                           "file and its .error file")
    if chunks:
        return CheckResult("store", True, f"{chunks} chunk(s) in {q.chunks_dir}; `snapd list` marks the snapshots "
                           "still damaged: checkpoint their source again to repair them, or `snapd rm` them; "
                           "`snapd gc` forgets chunks stored anew or unreferenced")
    return CheckResult("store", True, "nothing in quarantine")


def _remote(rt: Runtime) -> CheckResult | None:
    """Reaches the remote tier's bucket (one listing), when one is configured."""
    if rt.remote is None:
        return None
    try:
        count = rt.remote.probe()
    except SnapdError as err:
        return CheckResult("remote", False, err.message)
    return CheckResult("remote", True, f"{rt.remote.cfg.where}: {count} snapshot(s); {rt.remote.envelope.describe()}")


def _userfaultfd(rt: Runtime) -> CheckResult | None:
    """Whether restores can write through userfaultfds, when the settings ask for it; a warning
    when they cannot (restores then write with process_vm_writev: slower, never wrong)."""
    s = rt.settings
    if s.inject_method != "uffd" and s.restore_overlap == "never":
        return None
    asked = f"inject_method {s.inject_method}, restore_overlap {s.restore_overlap}"
    if rt.criu.has_feature("uffd-noncoop"):
        return CheckResult("userfaultfd", True, f"CRIU reports uffd-noncoop: {asked} in effect")
    return CheckResult("userfaultfd", True, f"CRIU reports no uffd-noncoop on this kernel: {asked} cannot take "
                       "effect, restores write memory with process_vm_writev", warning=True)


def diagnose(rt: Runtime) -> Diagnosis:
    kernel = platform.release()
    criu_ok, criu_detail = self_check(rt.criu)
    free = rt.store.free_bytes()
    gpu_version, gpu_check = _gpu_driver(rt.settings.gpu_required)
    checks = [
        CheckResult("criu", True, f"criu {rt.criu.version} at {rt.criu.path}"),
        CheckResult("criu-check", criu_ok, criu_detail),
        CheckResult("kernel", True, f"{kernel} ({os.uname().machine})"),
        _cgroup_v2(),
        *_cgroup_root(rt.cgroups),
        CheckResult(
            "state-dir-space",
            free >= MIN_FREE_BYTES,
            f"{free / 2**30:.1f} GiB free in {rt.settings.state_dir}"
            + ("" if free >= MIN_FREE_BYTES else f" (below {MIN_FREE_BYTES >> 30} GiB)"),
        ),
        _store(rt),
        gpu_check,
    ]
    checks += [check for check in (_userfaultfd(rt), _remote(rt)) if check is not None]
    return Diagnosis(kernel=kernel, gpu_driver=gpu_version, checks=checks)
