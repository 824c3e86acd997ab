"""The daemon process: gRPC behind the unix socket gate, optional TCP, health,
reflection, metrics, drain.

Start-up order: check the listening configuration and the cgroup root, take
the state-directory lock, find CRIU, recover the store (resume processes a
crashed daemon had stopped, remove half-written snapshots), become the child
subreaper of what the daemon restores and re-adopt the instances a killed
daemon left running (runtime/instances.py), then listen:
the gRPC server on its private socket in the state directory (and TCP), then
the public socket's gate (see ``access``). SIGTERM/SIGINT: report NOT_SERVING,
refuse new operations, wait for running ones to finish, stop the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import threading
from concurrent import futures
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from snapd.v1 import snapd_pb2, snapd_pb2_grpc
from snapd_daemon import __version__, metrics
from snapd_daemon.api.access import AccessInterceptor, PeerTags
from snapd_daemon.api.decoding import DecodeInterceptor
from snapd_daemon.api.gate import Gate
from snapd_daemon.api.service import SnapshotsServicer
from snapd_daemon.criu.binary import locate
from snapd_daemon.errors import ConfigInvalid, StoreError
from snapd_daemon.host.cgroups import CgroupRoot
from snapd_daemon.host.reaper import Reaper
from snapd_daemon.restore import readiness
from snapd_daemon.runtime import Runtime, Settings
from snapd_daemon.runtime.events import EventBus
from snapd_daemon.runtime.holds import HoldJournal
from snapd_daemon.runtime.instances import InstanceTable
from snapd_daemon.runtime.staging import Scratch
from snapd_daemon.server.config import Listen
from snapd_daemon.server.sdnotify import Notifier
from snapd_daemon.snapshots.catalog import Catalog
from snapd_daemon.store.hot import HotTier
from snapd_daemon.store.local import LocalStore
from snapd_daemon.store.remote import RemoteStore

log = structlog.get_logger()
SERVICE_NAME = snapd_pb2.DESCRIPTOR.services_by_name["Snapshots"].full_name
# The gRPC server's own socket, in the state directory (0700): only the gate reaches it.
PRIVATE_SOCKET = "api.sock"
# How long operations cancelled at the end of a drain get to roll back.
_ROLLBACK_SECONDS = 60.0
_SUN_PATH_MAX = 107


def _lock_state_dir(state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode().strip() or "?"
        os.close(fd)
        raise StoreError(path=state_dir, reason=f"in use by another snapd daemon (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _claim_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # stale socket of a daemon that died
        return
    finally:
        probe.close()
    raise StoreError(path=path, reason="another daemon is listening on this socket")


def _private_socket(state_dir: Path) -> Path:
    path = state_dir / PRIVATE_SOCKET
    if len(str(path)) > _SUN_PATH_MAX:
        raise ConfigInvalid(source="state_dir", reason=f"{path} is longer than a unix socket path may be "
                            f"({_SUN_PATH_MAX} bytes); use a shorter state directory")
    path.unlink(missing_ok=True)  # a stale one; the state lock says no daemon serves it
    return path


def _store_figures(store: LocalStore) -> tuple[int, int, int]:
    """(bytes of the chunk files, chunks, chunks in quarantine) for the metrics."""
    sizes = [size for _, size in store.chunks.all()]
    return sum(sizes), len(sizes), len(store.quarantine.chunk_ids())


def serve(settings: Settings, listen: Listen) -> None:
    """Run the daemon until SIGTERM/SIGINT. Raises SnapdError on start-up failures; a start that
    fails before serving removes the state and RAM directories it created itself."""
    ram = settings.ram_dir()
    # what a failed start removes: the state directory (and parents) it creates, its own RAM
    # directory (the shared one above it only when empty: another daemon may be using it)
    made = [_first_missing(settings.state_dir)] if not settings.state_dir.exists() else []
    made += [ram] if ram is not None and not ram.exists() else []
    served = threading.Event()
    try:
        _serve(settings, listen, served)
    except BaseException:
        if not served.is_set():
            for directory in made:
                shutil.rmtree(directory, ignore_errors=True)
            if ram is not None:
                with contextlib.suppress(OSError):
                    ram.parent.rmdir()
        raise


def _first_missing(path: Path) -> Path:
    """The outermost directory that creating ``path`` (which does not exist) would create."""
    path = path.absolute()
    while not path.parent.exists():
        path = path.parent
    return path


def _serve(settings: Settings, listen: Listen, served: threading.Event) -> None:
    """``serve``'s work; ``served`` is set once the daemon serves."""
    lock_fd = _lock_state_dir(settings.state_dir)
    os.chmod(settings.state_dir, 0o700)
    journal = HoldJournal(settings.state_dir / "holds")
    recovered = journal.recover()  # first: no configuration error may keep a killed daemon's processes held
    if listen.tcp:
        listen.tcp.check()
    cgroups = CgroupRoot.configure(settings.cgroup_root)
    private = _private_socket(settings.state_dir)
    criu = locate(settings.criu_path)
    if settings.restore_overlap != "never" or settings.inject_method == "uffd":  # asked once, now, not in a restore
        log.info("serve.userfaultfd", restore_overlap=settings.restore_overlap, inject_method=settings.inject_method,
                 uffd_noncoop=criu.has_feature("uffd-noncoop"))
    disk_scratch, ram_scratch = settings.scratch_dirs()
    scratch = Scratch(disk=disk_scratch, ram=ram_scratch, mode=settings.scratch)
    scratch.recover()
    hot_dir = settings.hot_dir()
    store = LocalStore(settings.state_dir, settings.io_threads, HotTier(hot_dir) if hot_dir else None,
                       settings.store_raw_below / 100)
    store.recover()
    catalog = Catalog(store)
    catalog.load()
    reaper = Reaper()
    reaper.start()  # from the main thread, which forks nothing from here on (host/reaper.py)
    events = EventBus()
    instances = InstanceTable(settings.instances_dir(), reaper, events, settings.keep_exited_instances,
                              settings.exited_instance_max_age)
    instances.load()
    readiness.resume(instances, catalog.find)
    rt = Runtime(settings=settings, criu=criu, store=store, catalog=catalog, scratch=scratch, cgroups=cgroups,
                 journal=journal, events=events, instances=instances, recovered_operations=recovered,
                 remote=RemoteStore(settings.remote) if settings.remote else None)
    notifier = Notifier()

    tags = PeerTags()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="rpc"),
                         interceptors=[AccessInterceptor(tags), DecodeInterceptor()])
    snapd_pb2_grpc.add_SnapshotsServicer_to_server(SnapshotsServicer(rt), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    server.add_insecure_port(f"unix:{private}")
    if listen.tcp:
        listen.tcp.add_to(server)
    if listen.metrics_address:
        metrics.watch_store(lambda: _store_figures(store))
        metrics.serve(listen.metrics_address)
    _claim_socket(listen.socket_path)
    gate = Gate(listen.socket_path, listen.socket_group, private, listen.policy, tags)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.set())
    server.start()
    os.chmod(private, 0o600)
    try:
        gate.start()
    except OSError as exc:
        raise ConfigInvalid(source="socket", reason=f"cannot serve {listen.socket_path}: {exc.strerror}") from exc
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "daemon.ready", version=__version__, pid=os.getpid(), socket=str(listen.socket_path),
        socket_group=listen.socket_group, allow_uids=sorted(listen.policy.uids),
        allow_gids=sorted(listen.policy.gids), tcp=listen.tcp.address if listen.tcp else None,
        tcp_tls=listen.tcp.tls if listen.tcp else None, metrics=listen.metrics_address or None,
        state_dir=str(settings.state_dir), cgroup_root=str(rt.cgroups.path) if rt.cgroups.path else None,
        criu=criu.path, criu_version=criu.version, remote=settings.remote.where if settings.remote else None,
    )
    if rt.remote is not None and rt.remote.envelope.write is None:
        log.warning("daemon.remote_plaintext", remote=rt.remote.cfg.where,
                    reason="remote_allow_plaintext without remote_encryption_key: process memory is uploaded "
                    "unencrypted")
    if listen.tcp and listen.tcp.insecure_loopback:
        log.warning("daemon.insecure_tcp", tcp=listen.tcp.address,
                    reason="plain TCP: every local user can call the API")
    served.set()
    notifier.send(f"READY=1\nMAINPID={os.getpid()}")
    while not stop.wait(1.0):
        pass

    notifier.send("STOPPING=1")
    log.info("daemon.draining", in_flight=[op.id for op in rt.registry.in_flight()])
    health_servicer.enter_graceful_shutdown()
    rt.registry.close()
    if not rt.registry.drain(listen.drain_timeout):
        # past the drain timeout: what has not reached its commit point rolls back now
        cancelled = rt.registry.cancel_all("the daemon is stopping and its drain timeout passed")
        log.warning("daemon.drain_timeout", cancelled=cancelled)
        if not rt.registry.drain(_ROLLBACK_SECONDS):
            log.error("daemon.stopped_with_operations", still_running=[op.id for op in rt.registry.in_flight()])
    events.close()  # ends every WatchEvents stream
    server.stop(grace=5).wait()
    gate.stop()
    if store.hot is not None:
        store.hot.release()
    scratch.release()
    listen.socket_path.unlink(missing_ok=True)
    private.unlink(missing_ok=True)
    os.close(lock_fd)
    log.info("daemon.stopped")
