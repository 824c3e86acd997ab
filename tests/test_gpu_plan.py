"""Where a snapshot's GPUs go on the restoring host (the decision only: it runs
without a GPU; the driver calls it feeds are exercised by test_gpu.py)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from snapd_daemon.errors import GpuMismatch, GpusBusy
from snapd_daemon.host.cuda import gpu_uuid_bytes
from snapd_daemon.host.gpu import GpuDevice, GpuRecord, plan_pairs, plan_targets

H100 = "NVIDIA H100 80GB HBM3"


def _gpu(n: int, name: str = H100, index: int = 0) -> GpuDevice:
    return GpuDevice(index=index, name=name, uuid=f"GPU-{n:08x}-0000-0000-0000-000000000000", memory_bytes=80 << 30)


A, B, C, X = _gpu(0xA), _gpu(0xB, index=1), _gpu(0xC), _gpu(0xE, index=1)


def _record(devices: tuple[GpuDevice, ...], gpus_of: dict[int, tuple[str, ...]]) -> GpuRecord:
    return GpuRecord(driver_version="580.159.04", cuda_driver_api=13000, devices=devices,
                     cuda_pids=tuple(gpus_of) or (10,), gpus_of=gpus_of)


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
    (_record((A,), {10: (A.uuid,)}), "580.95", (_gpu(0xF, "NVIDIA A100-SXM4-40GB"),), {}, f"no free {H100} here"),
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


def test_a_busy_gpu_is_passed_over_for_a_free_one_of_the_same_model() -> None:
    record = _record((A, B), {10: (A.uuid,)})
    # A runs another copy: this one goes to B, the free H100, and the driver is told so
    assert plan_pairs("s", record, "580.95", (A, B), {}, busy={A.uuid: "pids [7]"}) == {10: [_pair(A, B)]}
    assert plan_targets("s", record, "580.95", (A, B), {}, {A.uuid: "pids [7]"}) == {A.uuid: B}


def test_every_gpu_of_the_model_busy_is_refused_naming_them_unless_mapped() -> None:
    record = _record((A, B), {10: (A.uuid,)})
    busy = {A.uuid: "pids [7]", B.uuid: "being restored onto by op-1"}
    with pytest.raises(GpusBusy) as info:
        plan_pairs("snap-2", record, "580.95", (A, B), {}, busy=busy)
    message = info.value.message
    assert "snap-2" in message and H100 in message and "pids [7]" in message and "op-1" in message
    assert "--gpu-map" in message and info.value.status == "RESOURCE_EXHAUSTED"
    # a map is the caller's choice: a busy GPU is shared when asked for
    assert plan_pairs("s", record, "580.95", (A, B), {A.uuid: B.uuid}, busy=busy) == {10: [_pair(A, B)]}


def test_a_process_on_two_gpus_moves_as_a_pair() -> None:
    record = _record((A, B), {10: (A.uuid, B.uuid)})
    assert plan_pairs("s", record, "580.95", (A, B), {A.uuid: B.uuid, B.uuid: A.uuid}) == {
        10: [_pair(A, B), _pair(B, A)]}
    # both busy on one host of four: the free pair is taken, in index order
    Y, Z = _gpu(0x1A, index=2), _gpu(0x1B, index=3)
    busy = {A.uuid: "pids [1]", B.uuid: "pids [1]"}
    assert plan_pairs("s", record, "580.95", (A, B, Y, Z), {}, busy=busy) == {10: [_pair(A, Y), _pair(B, Z)]}
