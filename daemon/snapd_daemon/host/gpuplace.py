"""Where a restore's GPUs go: one pure decision over what the snapshot needs, the host's
GPUs as NVML shows them now, what restores in flight have reserved, and the policy.

``place`` reads nothing and changes nothing: runtime/gpuleases.py feeds it NVML's
inventory and the reservations it holds, and keeps the reservation it returns
until the restore ends (from then on NVML shows the restored tree's real use).

Each GPU the snapshot's processes used (``GpuRecord.used``) goes, in index order:
  - where the caller's ``uuid_map`` says, whatever is on it (their choice; the
    bytes are reserved all the same);
  - else to itself when this host has it and it qualifies, else to the first GPU
    of the same model (index order) that qualifies, never to one this snapshot's
    other GPUs already take.
A GPU qualifies under ``shared`` when its room (NVML's free memory less what
restores in flight reserved on it) covers what the snapshot's processes held
there plus the margin; under ``exclusive``, and for a GPU whose need the
snapshot did not record, when no process holds memory on it and no restore in
flight reserved it. A reservation is the need (the whole GPU when unknown).
A restore into a sandbox (host/sandbox.py) that names its GPUs (``Policy.visible``,
from NVIDIA_VISIBLE_DEVICES: UUIDs or indices) sees only those GPUs of the host.
No GPU qualifying is refused with the figures: ``GpuRoomShort`` (shared: per
GPU of the model, bytes needed, free, reserved and by whom, and who holds the
rest) or ``GpusBusy`` (exclusive); a model the host lacks is ``GpuMismatch``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from snapd_daemon.errors import GpuMismatch, GpuRoomShort, GpusBusy
from snapd_daemon.host.gpu import GpuDevice, GpuRecord

SHARED = "shared"
EXCLUSIVE = "exclusive"
POLICIES = (SHARED, EXCLUSIVE)


@dataclass(frozen=True)
class Holder:
    """A process holding GPU memory (NVML's compute process list)."""

    pid: int
    name: str
    bytes: int


@dataclass(frozen=True)
class GpuNow:
    """One GPU of the host as NVML shows it now."""

    device: GpuDevice
    free_bytes: int
    holders: tuple[Holder, ...] = ()


@dataclass(frozen=True)
class Reservation:
    """Bytes of a GPU a restore in flight will take (``operation_id``'s)."""

    operation_id: str
    uuid: str
    bytes: int


_MARGIN_RE = re.compile(r"(?:(\d+(?:\.\d+)?)%|(\d+)([KMGT]?))", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Margin:
    """Room a GPU must keep free beyond what a snapshot's processes held there: ``bytes``,
    or ``percent`` of that GPU's memory, whichever is larger."""

    bytes: int = 1 << 30
    percent: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Margin:
        """"1073741824", "512M", "1G" (binary units) or "5%" (of each GPU's memory); ValueError otherwise."""
        match = _MARGIN_RE.fullmatch(text.strip())
        if not match:
            raise ValueError(f"{text!r} is not a size (1073741824, 512M, 1G) or a percentage of a GPU's memory (5%)")
        if match.group(1) is not None:
            percent = float(match.group(1))
            if percent >= 100:
                raise ValueError(f"{text!r}: a margin must be below 100% of a GPU's memory")
            return cls(bytes=0, percent=percent)
        return cls(bytes=int(match.group(2)) * _UNITS[match.group(3).upper()])

    def of(self, device: GpuDevice) -> int:
        return max(self.bytes, int(device.memory_bytes * self.percent / 100))


@dataclass(frozen=True)
class Policy:
    mode: str = SHARED
    margin: Margin = field(default_factory=Margin)
    # the only GPUs (UUIDs or indices) the restore may use; None: any
    visible: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Placement:
    # snapshot GPU UUID -> the GPU here it is restored onto
    targets: dict[str, GpuDevice]
    # GPU UUID here -> bytes this restore reserves on it until it ends
    reserve: dict[str, int]


def place(snapshot_id: str, record: GpuRecord, version: str, gpus: tuple[GpuNow, ...],
          reservations: tuple[Reservation, ...], policy: Policy, uuid_map: dict[str, str]) -> Placement:
    """Where ``record``'s GPUs go on a host with ``gpus`` (see the module docstring);
    GpuMismatch, GpusBusy or GpuRoomShort when they cannot."""
    gpus = _visible(snapshot_id, gpus, policy.visible)
    devices = tuple(g.device for g in gpus)
    _check_host(snapshot_id, record, version, devices, uuid_map)
    by_uuid = {g.device.uuid: g for g in gpus}
    taken = set(uuid_map.values())
    targets: dict[str, GpuDevice] = {}
    reserve: dict[str, int] = {}
    for old in record.used():
        need = record.vram.get(old.uuid)
        if old.uuid in uuid_map:
            new = by_uuid.get(uuid_map[old.uuid])
            if new is None:
                among = "" if policy.visible is None else " among those the sandbox may use"
                raise GpuMismatch(snapshot_id=snapshot_id, reason=f"no GPU {uuid_map[old.uuid]} on this host{among}")
        else:
            new = _choose(snapshot_id, old, need, gpus, taken, reservations, policy)
        if new.device.name != old.name:
            raise GpuMismatch(snapshot_id=snapshot_id,
                              reason=f"GPU {old.uuid} was a {old.name}; {new.device.uuid} here is a {new.device.name}")
        if new.device.uuid in reserve:
            raise GpuMismatch(snapshot_id=snapshot_id,
                              reason=f"two of the snapshot's GPUs would go to {new.device.uuid}")
        taken.add(new.device.uuid)
        targets[old.uuid] = new.device
        reserve[new.device.uuid] = new.device.memory_bytes if need is None else need
    return Placement(targets, reserve)


def _visible(snapshot_id: str, gpus: tuple[GpuNow, ...], visible: tuple[str, ...] | None) -> tuple[GpuNow, ...]:
    """The GPUs of ``gpus`` that ``visible`` names by UUID or index (all when None); GpuMismatch when
    it names none of them."""
    if visible is None:
        return gpus
    kept = tuple(g for g in gpus if g.device.uuid in visible or str(g.device.index) in visible)
    if not kept:
        here = ", ".join(f"{g.device.index} ({g.device.uuid})" for g in gpus) or "none"
        raise GpuMismatch(snapshot_id=snapshot_id,
                          reason=f"the sandbox's NVIDIA_VISIBLE_DEVICES names {', '.join(visible) or 'no GPU'}, "
                                 f"none of this host's GPUs (index (UUID): {here})")
    return kept


def _check_host(snapshot_id: str, record: GpuRecord, version: str, devices: tuple[GpuDevice, ...],
                uuid_map: dict[str, str]) -> None:
    """The driver branch, the number of GPUs and the map's keys."""
    if not devices:
        raise GpuMismatch(snapshot_id=snapshot_id, reason="no NVIDIA GPU or driver on this host")
    if version.split(".")[0] != record.driver_version.split(".")[0]:
        raise GpuMismatch(snapshot_id=snapshot_id,
                          reason=f"driver {version} here, snapshot taken with {record.driver_version} "
                                 "(the driver branch must match)")
    used = record.used()
    if len(devices) < len(used):
        raise GpuMismatch(snapshot_id=snapshot_id,
                          reason=f"{len(devices)} GPU(s) here, the snapshot's processes used {len(used)}")
    unknown = set(uuid_map) - {d.uuid for d in used}
    if unknown:
        raise GpuMismatch(snapshot_id=snapshot_id,
                          reason=f"GPU map names GPUs the snapshot's processes did not use: {sorted(unknown)}")


def _choose(snapshot_id: str, old: GpuDevice, need: int | None, gpus: tuple[GpuNow, ...], taken: set[str],
            reservations: tuple[Reservation, ...], policy: Policy) -> GpuNow:
    """The GPU ``old`` goes to: itself, else the first of its model, that qualifies."""
    same = sorted((g for g in gpus if g.device.name == old.name and g.device.uuid not in taken),
                  key=lambda g: (g.device.uuid != old.uuid, g.device.index))
    if not same:
        if any(g.device.name == old.name for g in gpus):
            reason = f"every {old.name} here already takes another of the snapshot's GPUs; none is left for {old.uuid}"
        else:
            models = sorted({g.device.name for g in gpus})
            reason = f"GPU {old.uuid} was a {old.name}; this host has none (its GPUs: {', '.join(models)})"
        raise GpuMismatch(snapshot_id=snapshot_id, reason=reason)
    for g in same:
        mine = [r for r in reservations if r.uuid == g.device.uuid]
        if policy.mode == SHARED and need is not None:
            if g.free_bytes - sum(r.bytes for r in mine) >= need + policy.margin.of(g.device):
                return g
        elif not g.holders and not mine:
            return g
    if policy.mode == SHARED and need is not None:
        raise GpuRoomShort(
            snapshot_id=snapshot_id, model=old.name, uuid=old.uuid, needed_bytes=need + policy.margin.of(old),
            gpus="; ".join(_room(g, need, policy.margin, reservations) for g in same),
            room=[_figures(g, need + policy.margin.of(g.device), reservations) for g in same],
        )
    why = "" if need is not None else " (the snapshot records no VRAM figure for it: only an idle GPU will do)"
    raise GpusBusy(snapshot_id=snapshot_id, model=old.name, uuid=old.uuid,
                   busy="; ".join(f"GPU {g.device.index} ({g.device.uuid}): {_users(g, reservations)}"
                                  for g in same) + why)


def size(n: int) -> str:
    """Bytes as "3.0 GiB (3221225472 bytes)"."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.1f} {unit} ({n} bytes)" if unit != "B" else f"{n} bytes"


def _users(g: GpuNow, reservations: tuple[Reservation, ...]) -> str:
    """Who holds or reserved memory on ``g``: "pid 7 (python3) 3.0 GiB (...), restore op-x reserves ..."."""
    held = [f"pid {h.pid} ({h.name}) {size(h.bytes)}" for h in g.holders]
    held += [f"restore {r.operation_id} reserves {size(r.bytes)}" for r in reservations if r.uuid == g.device.uuid]
    return ", ".join(held) or "nothing"


def _room(g: GpuNow, need: int, margin: Margin, reservations: tuple[Reservation, ...]) -> str:
    reserved = sum(r.bytes for r in reservations if r.uuid == g.device.uuid)
    return (f"GPU {g.device.index} ({g.device.uuid}) needs {size(need + margin.of(g.device))} ({size(need)} held "
            f"at checkpoint + margin {size(margin.of(g.device))}), has {size(g.free_bytes)} free of "
            f"{size(g.device.memory_bytes)}, {size(reserved)} of it reserved; held by {_users(g, reservations)}")


def _figures(g: GpuNow, needed: int, reservations: tuple[Reservation, ...]) -> dict[str, object]:
    """The same as data (the error's ``room`` field, for schedulers)."""
    return {"index": g.device.index, "uuid": g.device.uuid, "needed_bytes": needed, "free_bytes": g.free_bytes,
            "reserved": [{"operation_id": r.operation_id, "bytes": r.bytes}
                         for r in reservations if r.uuid == g.device.uuid],
            "holders": [{"pid": h.pid, "name": h.name, "bytes": h.bytes} for h in g.holders]}
