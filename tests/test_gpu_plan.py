"""Where a snapshot's GPUs go on the restoring host (the decision only, host/gpuplace.py, fed
inventories as NVML reports them, and the reservations of runtime/gpuleases.py: it runs
without a GPU; the driver calls it feeds are exercised by test_gpu.py)."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict

import pytest

from snapd_daemon.errors import ConfigInvalid, GpuMismatch, GpuRoomShort, GpusBusy
from snapd_daemon.host import nvml
from snapd_daemon.host.cuda import gpu_uuid_bytes
from snapd_daemon.host.gpu import GpuDevice, GpuRecord, pairs_for, vram_by_gpu
from snapd_daemon.host.gpuplace import EXCLUSIVE, GpuNow, Holder, Margin, Policy, Reservation, place
from snapd_daemon.host.sandbox import visible_gpus
from snapd_daemon.runtime.gpuleases import GpuLeases
from snapd_daemon.server import config

H100 = "NVIDIA H100 80GB HBM3"


def _gpu(n: int, name: str = H100, index: int = 0) -> GpuDevice:
    return GpuDevice(index=index, name=name, uuid=f"GPU-{n:08x}-0000-0000-0000-000000000000", memory_bytes=80 << 30)


A, B, C, X = _gpu(0xA), _gpu(0xB, index=1), _gpu(0xC), _gpu(0xE, index=1)


GiB = 1 << 30


def _record(devices: tuple[GpuDevice, ...], gpus_of: dict[int, tuple[str, ...]],
            vram: dict[str, int] | None = None) -> GpuRecord:
    return GpuRecord(driver_version="580.159.04", cuda_driver_api=13000, devices=devices,
                     cuda_pids=tuple(gpus_of) or (10,), gpus_of=gpus_of, vram=vram or {})


def _now(device: GpuDevice, *holders: Holder, free: int | None = None) -> GpuNow:
    """``device`` as NVML shows it with ``holders`` on it (free: total less what they hold, unless given)."""
    held = sum(h.bytes for h in holders)
    return GpuNow(device, device.memory_bytes - held if free is None else free, holders)


def plan_pairs(snapshot_id: str, record: GpuRecord, version: str, devices: tuple[GpuDevice, ...],
               uuid_map: dict[str, str], policy: Policy = Policy()) -> dict[int, list[tuple[bytes, bytes]]]:
    """The driver pairs for ``record`` on idle ``devices``."""
    placed = place(snapshot_id, record, version, tuple(_now(d) for d in devices), (), policy, uuid_map)
    return pairs_for(record, placed.targets, uuid_map)


def _pair(old: GpuDevice, new: GpuDevice) -> tuple[bytes, bytes]:
    return gpu_uuid_bytes(old.uuid), gpu_uuid_bytes(new.uuid)


def test_same_gpus_need_no_pairs() -> None:
    assert plan_pairs("s", _record((A, B), {10: (A.uuid,), 11: (B.uuid,)}), "580.95", (A, B), {}) == {}


def test_only_the_gpus_used_must_exist_and_every_used_gpu_is_paired() -> None:
    # taken on a 2-GPU host by one process on B; restored on a host that has one other H100
    assert plan_pairs("s", _record((A, B), {10: (B.uuid,)}), "580.95", (C,), {}) == {10: [_pair(B, C)]}
    # two processes on A and B; B is gone here: it moves to the free H100, and each pid
    # gets a pair for each GPU it used (unmoved ones too), as the driver requires
    record = _record((A, B), {10: (A.uuid,), 11: (A.uuid, B.uuid)})
    assert plan_pairs("s", record, "580.95", (A, X), {}) == {10: [_pair(A, A)], 11: [_pair(A, A), _pair(B, X)]}


def test_a_pid_nvml_did_not_list_counts_as_using_every_gpu() -> None:
    record = GpuRecord(driver_version="580.159.04", cuda_driver_api=13000, devices=(A, B), cuda_pids=(10, 11),
                       gpus_of={10: (A.uuid,)})
    assert record.used() == (A, B)
    assert plan_pairs("s", record, "580.95", (A, X), {}) == {10: [_pair(A, A)], 11: [_pair(A, A), _pair(B, X)]}


def test_explicit_map_pairs_even_onto_the_same_gpu() -> None:
    record = _record((A,), {10: (A.uuid,)})
    assert plan_pairs("s", record, "580.95", (A,), {A.uuid: A.uuid}) == {10: [_pair(A, A)]}
    assert plan_pairs("s", _record((A, B), {}), "580.95", (X, C), {A.uuid: C.uuid}) == {
        10: [_pair(A, C), _pair(B, X)]}  # unknown usage: every recorded GPU counts as used


@pytest.mark.parametrize(("record", "version", "devices", "uuid_map", "reason"), [
    (_record((A,), {10: (A.uuid,)}), "570.1", (A,), {}, "driver 570.1 here, snapshot taken with 580.159.04"),
    (_record((A, B), {10: (A.uuid, B.uuid)}), "580.95", (C,), {}, "1 GPU(s) here, the snapshot's processes used 2"),
    (_record((A,), {10: (A.uuid,)}), "580.95", (_gpu(0xF, "NVIDIA A100-SXM4-40GB"),), {}, f"was a {H100}; this host has none (its GPUs: NVIDIA A100-SXM4-40GB)"),
    (_record((A,), {10: (A.uuid,)}), "580.95", (A,), {B.uuid: A.uuid}, "did not use"),
    (_record((A,), {10: (A.uuid,)}), "580.95", (A,), {A.uuid: C.uuid}, f"no GPU {C.uuid} on this host"),
    (_record((A,), {10: (A.uuid,)}), "580.95", (), {}, "no NVIDIA GPU"),
])
def test_refusals_name_the_reason(record: GpuRecord, version: str, devices: tuple[GpuDevice, ...],
                                  uuid_map: dict[str, str], reason: str) -> None:
    with pytest.raises(GpuMismatch) as info:
        plan_pairs("snap-1", record, version, devices, uuid_map)
    assert reason in info.value.message and "snap-1" in info.value.message


def test_record_round_trips_through_the_manifest_json() -> None:
    record = _record((A, B), {10: (A.uuid,), 11: (A.uuid, B.uuid)})
    again = GpuRecord.from_dict(json.loads(json.dumps(asdict(record), sort_keys=True)))
    assert again == record and again.used() == (A, B)
    assert GpuRecord.from_dict({**asdict(record), "gpus_of": {}}).used() == (A, B)  # usage unknown: all


def test_record_keeps_the_vram_each_gpu_held_and_older_manifests_load_without_it() -> None:
    record = _record((A, B), {10: (A.uuid,)}, vram={A.uuid: 3 * GiB})
    assert GpuRecord.from_dict(json.loads(json.dumps(asdict(record)))) == record
    old = asdict(record)
    del old["vram"]
    assert GpuRecord.from_dict(old).vram == {}


def test_vram_is_recorded_per_gpu_only_where_nvml_gave_every_pid_a_figure() -> None:
    view = nvml.NvmlView("580.95", (
        nvml.NvmlDevice(0, H100, A.uuid, 80 * GiB, False, {10: 2 * GiB, 11: GiB, 99: 5 * GiB}),
        nvml.NvmlDevice(1, H100, B.uuid, 80 * GiB, False, {10: 0}),  # NVML did not say
    ))
    assert vram_by_gpu(view, (10, 11)) == {A.uuid: 3 * GiB}
    assert vram_by_gpu(nvml.NvmlView(error="no driver"), (10,)) == {}


# -- exclusive: today's rule ------------------------------------------------------------------

def test_exclusive_passes_a_busy_gpu_over_for_an_idle_one_of_the_same_model() -> None:
    record = _record((A, B), {10: (A.uuid,)}, vram={A.uuid: GiB})
    gpus = (_now(A, Holder(7, "python3", GiB)), _now(B))
    placed = place("s", record, "580.95", gpus, (), Policy(EXCLUSIVE), {})
    assert placed.targets == {A.uuid: B} and placed.reserve == {B.uuid: GiB}
    assert pairs_for(record, placed.targets, {}) == {10: [_pair(A, B)]}
    # a GPU a restore in flight reserved counts as busy too
    placed = place("s", record, "580.95", (_now(A), _now(B)), (Reservation("op-1", A.uuid, 1),), Policy(EXCLUSIVE), {})
    assert placed.targets == {A.uuid: B}


def test_exclusive_with_every_gpu_of_the_model_busy_is_refused_naming_them_unless_mapped() -> None:
    record = _record((A, B), {10: (A.uuid,)}, vram={A.uuid: GiB})
    gpus = (_now(A, Holder(7, "python3", 3 * GiB)), _now(B))
    held = (Reservation("op-1", B.uuid, 2 * GiB),)
    with pytest.raises(GpusBusy) as info:
        place("snap-2", record, "580.95", gpus, held, Policy(EXCLUSIVE), {})
    message = info.value.message
    assert "snap-2" in message and H100 in message and "--gpu-map" in message and "--gpu-policy shared" in message
    assert f"GPU 0 ({A.uuid}): pid 7 (python3) 3.0 GiB" in message
    assert f"GPU 1 ({B.uuid}): restore op-1 reserves 2.0 GiB" in message
    assert info.value.status == "RESOURCE_EXHAUSTED" and info.value.exit_code == 61
    # a map is the caller's choice: a busy GPU is shared when asked for, and reserved
    placed = place("s", record, "580.95", gpus, held, Policy(EXCLUSIVE), {A.uuid: B.uuid})
    assert placed.targets == {A.uuid: B} and placed.reserve == {B.uuid: GiB}


def test_a_process_on_two_gpus_moves_as_a_pair() -> None:
    record = _record((A, B), {10: (A.uuid, B.uuid)})
    assert plan_pairs("s", record, "580.95", (A, B), {A.uuid: B.uuid, B.uuid: A.uuid}) == {
        10: [_pair(A, B), _pair(B, A)]}
    # both busy on one host of four: the idle pair is taken, in index order
    Y, Z = _gpu(0x1A, index=2), _gpu(0x1B, index=3)
    gpus = (_now(A, Holder(1, "x", GiB)), _now(B, Holder(1, "x", GiB)), _now(Y), _now(Z))
    placed = place("s", record, "580.95", gpus, (), Policy(EXCLUSIVE), {})
    assert pairs_for(record, placed.targets, {}) == {10: [_pair(A, Y), _pair(B, Z)]}


# -- shared: by room ----------------------------------------------------------------------------

def test_shared_places_a_small_server_beside_another_process_on_its_own_gpu() -> None:
    """The issue's case: a 3 GB server refused an 80 GB H100 because another process held 3 GB."""
    record = _record((A,), {10: (A.uuid,)}, vram={A.uuid: 3 * GiB})
    gpus = (_now(A, Holder(7, "python3", 3 * GiB)),)
    placed = place("s", record, "580.95", gpus, (), Policy(), {})
    assert placed.targets == {A.uuid: A} and placed.reserve == {A.uuid: 3 * GiB}
    assert pairs_for(record, placed.targets, {}) == {}  # onto itself: the driver needs no pairs
    with pytest.raises(GpusBusy):
        place("s", record, "580.95", gpus, (), Policy(EXCLUSIVE), {})


def test_shared_goes_to_another_gpu_of_the_model_when_its_own_lacks_room() -> None:
    A100 = _gpu(0xD, "NVIDIA A100-SXM4-80GB", index=1)
    record = _record((A,), {10: (A.uuid,)}, vram={A.uuid: 10 * GiB})
    full = _now(A, Holder(7, "vllm", 75 * GiB))
    # the A100 has room but is another model; B has room
    placed = place("s", record, "580.95", (full, _now(A100), _now(B)), (), Policy(), {})
    assert placed.targets == {A.uuid: B}
    with pytest.raises(GpuRoomShort):
        place("s", record, "580.95", (full, _now(A100)), (), Policy(), {})


def test_room_counts_the_margin_and_what_restores_in_flight_reserved_to_the_byte() -> None:
    record = _record((A,), {10: (A.uuid,)}, vram={A.uuid: 3 * GiB})
    margin = Margin(bytes=GiB)
    held = (Reservation("op-1", A.uuid, 2 * GiB),)
    exact = _now(A, free=6 * GiB)  # 6 free - 2 reserved == 3 needed + 1 margin
    assert place("s", record, "580.95", (exact,), held, Policy(margin=margin), {}).targets == {A.uuid: A}
    with pytest.raises(GpuRoomShort):
        place("s", record, "580.95", (_now(A, free=6 * GiB - 1),), held, Policy(margin=margin), {})
    # a percentage of the GPU's memory (80 GiB: 5% = 4 GiB) when larger than the bytes
    assert Margin(bytes=GiB, percent=5).of(A) == 4 * GiB
    with pytest.raises(GpuRoomShort):
        place("s", record, "580.95", (exact,), held, Policy(margin=Margin(bytes=0, percent=5)), {})


def test_no_room_is_refused_with_per_gpu_figures_and_who_holds_the_rest() -> None:
    record = _record((A, B), {10: (A.uuid,)}, vram={A.uuid: 3 * GiB})
    gpus = (_now(A, Holder(7, "vllm", 70 * GiB), Holder(8, "python3", 8 * GiB)),
            _now(B, Holder(9, "sglang", 74 * GiB)))
    held = (Reservation("op-0000000000ab", B.uuid, 4 * GiB),)
    with pytest.raises(GpuRoomShort) as info:
        place("snap-3", record, "580.95", gpus, held, Policy(margin=Margin(bytes=GiB)), {})
    err = info.value
    assert err.exit_code == 80 and err.status == "RESOURCE_EXHAUSTED"
    message = err.message
    assert f"snapshot snap-3: no {H100} here has room for what its processes held on GPU {A.uuid}" in message
    assert (f"GPU 0 ({A.uuid}) needs 4.0 GiB ({4 * GiB} bytes) (3.0 GiB ({3 * GiB} bytes) held at checkpoint + "
            f"margin 1.0 GiB ({GiB} bytes)), has 2.0 GiB ({2 * GiB} bytes) free") in message
    assert "held by pid 7 (vllm) 70.0 GiB" in message and "pid 8 (python3) 8.0 GiB" in message
    assert f"GPU 1 ({B.uuid}) needs 4.0 GiB" in message and "restore op-0000000000ab reserves 4.0 GiB" in message
    assert err.fields["needed_bytes"] == 4 * GiB
    assert err.fields["room"] == [
        {"index": 0, "uuid": A.uuid, "needed_bytes": 4 * GiB, "free_bytes": 2 * GiB, "reserved": [],
         "holders": [{"pid": 7, "name": "vllm", "bytes": 70 * GiB}, {"pid": 8, "name": "python3", "bytes": 8 * GiB}]},
        {"index": 1, "uuid": B.uuid, "needed_bytes": 4 * GiB, "free_bytes": 6 * GiB,
         "reserved": [{"operation_id": "op-0000000000ab", "bytes": 4 * GiB}],
         "holders": [{"pid": 9, "name": "sglang", "bytes": 74 * GiB}]},
    ]


def test_a_gpu_whose_need_was_not_recorded_takes_only_an_idle_gpu_and_reserves_it_whole() -> None:
    record = _record((A, B), {10: (A.uuid,)})  # an older snapshot: no VRAM figures
    gpus = (_now(A, Holder(7, "python3", GiB)), _now(B))
    placed = place("s", record, "580.95", gpus, (), Policy(), {})
    assert placed.targets == {A.uuid: B} and placed.reserve == {B.uuid: B.memory_bytes}
    with pytest.raises(GpusBusy) as info:
        place("s", record, "580.95", gpus, (Reservation("op-1", B.uuid, 1),), Policy(), {})
    assert "records no VRAM figure" in info.value.message


def test_a_map_overrides_the_room_check_and_still_reserves() -> None:
    record = _record((A, B), {10: (A.uuid,)}, vram={A.uuid: 3 * GiB})
    gpus = (_now(A), _now(B, free=GiB))
    placed = place("s", record, "580.95", gpus, (), Policy(), {A.uuid: B.uuid})
    assert placed.targets == {A.uuid: B} and placed.reserve == {B.uuid: 3 * GiB}


def test_two_gpus_of_one_snapshot_never_share_a_target() -> None:
    record = _record((A, B), {10: (A.uuid, B.uuid)}, vram={A.uuid: GiB, B.uuid: GiB})
    placed = place("s", record, "580.95", (_now(A), _now(B)), (), Policy(), {})
    assert placed.targets == {A.uuid: A, B.uuid: B}
    # mapped elsewhere, A's own GPU is free for B
    assert place("s", record, "580.95", (_now(A), _now(B)), (), Policy(), {A.uuid: B.uuid}).targets == {
        A.uuid: B, B.uuid: A}
    a100 = _gpu(0xD, "NVIDIA A100-SXM4-80GB")
    with pytest.raises(GpuMismatch) as info:  # B's only candidate is taken by A's map
        place("s", record, "580.95", (_now(a100), _now(B)), (), Policy(), {A.uuid: B.uuid})
    assert f"every {H100} here already takes another of the snapshot's GPUs; none is left for {B.uuid}" in \
        info.value.message


@pytest.mark.parametrize(("text", "margin"), [
    ("1073741824", Margin(bytes=1 << 30)), ("512M", Margin(bytes=512 << 20)), ("1g", Margin(bytes=1 << 30)),
    ("0", Margin(bytes=0)), ("5%", Margin(bytes=0, percent=5.0)), ("2.5%", Margin(bytes=0, percent=2.5)),
])
def test_margin_parses_bytes_or_a_percentage(text: str, margin: Margin) -> None:
    assert Margin.parse(text) == margin


@pytest.mark.parametrize("text", ["", "1.5G", "-1", "100%", "lots", "5 %%"])
def test_a_bad_margin_is_refused_by_the_config(text: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        config.gpu_margin(text)
    assert "gpu_margin" in info.value.message


# -- reservations: concurrent restores ---------------------------------------------------------

def test_two_restores_racing_for_the_last_room_one_is_placed_one_refused_until_the_first_ends() -> None:
    """Both choose from the same NVML inventory (the first restored tree is not on the GPU yet):
    the reservation of the first is what refuses the second."""
    first = _record((A,), {10: (A.uuid,)}, vram={A.uuid: 5 * GiB})
    second = _record((A,), {20: (A.uuid,)}, vram={A.uuid: 4 * GiB + 1})
    inventory = ("580.95", (_now(A, Holder(7, "python3", 70 * GiB)),))  # 10 GiB free: room for one
    leases = GpuLeases(lambda: inventory)
    policy = Policy(margin=Margin(bytes=GiB))
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}
    release = threading.Event()

    def restore(op: str, record: GpuRecord) -> None:
        barrier.wait()
        try:
            with leases.lease(op, op, record, {}, policy) as (_pairs, gpus):
                outcomes[op] = gpus
                release.wait(30)
        except GpuRoomShort as exc:
            outcomes[op] = exc
            release.set()

    threads = [threading.Thread(target=restore, args=(op, r)) for op, r in (("op-1", first), ("op-2", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    placed = [op for op, o in outcomes.items() if isinstance(o, dict)]
    refused = [o for o in outcomes.values() if isinstance(o, GpuRoomShort)]
    assert len(placed) == 1 and len(refused) == 1, outcomes
    assert outcomes[placed[0]] == {A.uuid: A.uuid}
    assert f"restore {placed[0]} reserves" in refused[0].message
    # the winner has ended: its reservation with it
    with leases.lease("op-3", "s", second, {}, policy) as (_pairs, gpus):
        assert gpus == {A.uuid: A.uuid}


def test_a_reservation_ends_with_a_failed_restore() -> None:
    record = _record((A,), {10: (A.uuid,)}, vram={A.uuid: 70 * GiB})
    leases = GpuLeases(lambda: ("580.95", (_now(A),)))
    with pytest.raises(RuntimeError), leases.lease("op-1", "s", record, {}, Policy()):
        raise RuntimeError("the restore failed")
    with leases.lease("op-2", "s", record, {}, Policy()) as (_pairs, gpus):
        assert gpus == {A.uuid: A.uuid}


def test_a_sandbox_naming_its_gpus_restricts_placement_to_them() -> None:
    """A restore into a sandbox (--into) sees only the GPUs its NVIDIA_VISIBLE_DEVICES names,
    by index or UUID; "all" or unset restricts nothing; "none" leaves no GPU."""
    assert [visible_gpus(v) for v in (None, "", "all", "none", "void")] == [None, None, None, (), ()]
    assert visible_gpus(f"1, {A.uuid}") == ("1", A.uuid)
    record = _record((A,), {10: (A.uuid,)}, {A.uuid: 3 * GiB})
    gpus = (_now(A), _now(B))
    for named in ("1", B.uuid):
        placed = place("s", record, "580.95", gpus, (), Policy(visible=visible_gpus(named)), {})
        assert placed.targets == {A.uuid: B} and placed.reserve == {B.uuid: 3 * GiB}
    assert place("s", record, "580.95", gpus, (), Policy(visible=visible_gpus("all")), {}).targets == {A.uuid: A}
    with pytest.raises(GpuMismatch) as none:
        place("s", record, "580.95", gpus, (), Policy(visible=visible_gpus("none")), {})
    assert "NVIDIA_VISIBLE_DEVICES names no GPU, none of this host's GPUs (index (UUID): 0 (" in none.value.message
    with pytest.raises(GpuMismatch) as mapped:
        place("s", record, "580.95", gpus, (), Policy(visible=("1",)), {A.uuid: A.uuid})
    assert f"no GPU {A.uuid} on this host among those the sandbox may use" in mapped.value.message
