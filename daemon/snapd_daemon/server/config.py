"""`snapd serve` options -> the daemon's Settings and Listen (where and to whom it listens), and the TOML config file.

The config file (``snapd serve --config /etc/gpu-snapd/config.toml``) holds the
same options as the command line: each key is an option's long name with "_"
for "-" (``--tls-client-ca`` is ``tls_client_ca``; repeatable options take a
list). Options given on the command line win over the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import socket
import tomllib
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapd_daemon.api.access import AccessPolicy, resolve_gid
from snapd_daemon.errors import ConfigInvalid
from snapd_daemon.host.gpuplace import Margin
from snapd_daemon.runtime import Settings
from snapd_daemon.server.tcp import TcpListen
from snapd_daemon.snapshots.signing import FleetKeys
from snapd_daemon.store.envelope import Envelope
from snapd_daemon.store.s3 import RemoteConfig

DEFAULT_SOCKET = Path("/run/gpu-snapd/snapd.sock")


@dataclass(frozen=True)
class Listen:
    socket_path: Path = DEFAULT_SOCKET
    # Group owning the public socket (mode 0660, owner root).
    socket_group: int = 0
    # Unix socket callers allowed besides root.
    policy: AccessPolicy = AccessPolicy()
    # Optional TCP port (mutual TLS, or plain loopback by name).
    tcp: TcpListen | None = None
    # Optional host:port for Prometheus /metrics.
    metrics_address: str = ""
    # Seconds to wait for running operations on shutdown.
    drain_timeout: float = 600.0




def load(path: Path, known: Iterable[str]) -> dict[str, Any]:
    """The file's keys and values; refuses unreadable files, bad TOML and unknown keys."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigInvalid(source=str(path), reason=exc.strerror or str(exc)) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigInvalid(source=str(path), reason=f"not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(known))
    if unknown:
        guesses = [f"{key} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(key, known, 1)) else key
                   for key in unknown]
        raise ConfigInvalid(source=str(path), reason=f"unknown key(s) {', '.join(guesses)}; the keys are the "
                            "options of `snapd serve --help` with _ for -")
    return data


# --check-config gives the remote tier's endpoint this long to accept a connection
CONNECT_CHECK_SECONDS = 3.0


def check_reachable(remote: RemoteConfig) -> None:
    """Raise ConfigInvalid (remote_endpoint) unless a TCP connection to the endpoint's host and
    port opens within CONNECT_CHECK_SECONDS (no request is made: credentials are not checked)."""
    url = urllib.parse.urlsplit(remote.endpoint)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname or "", port), timeout=CONNECT_CHECK_SECONDS).close()
    except (OSError, ValueError) as exc:
        raise ConfigInvalid(source="remote_endpoint", reason=f"cannot connect to {remote.endpoint} within "
                            f"{CONNECT_CHECK_SECONDS:g} s ({exc}): check the address, the network and that the "
                            "server runs") from exc


def build(o: dict[str, Any]) -> tuple[Settings, Listen]:
    """Settings and Listen from the merged options of `snapd serve`."""
    settings = Settings(
        state_dir=o["state_dir"], criu_path=o["criu"], criu_log_level=o["criu_log_level"], scratch=o["scratch"],
        inject_min_bytes=o["inject_min_mb"] << 20, inject_huge_pages=o["inject_huge_pages"],
        restore_overlap=o["restore_overlap"], slow_phase_seconds=o["slow_phase_seconds"],
        inject_method=o["inject_method"],
        warm_file_bytes=o["warm_files_mb"] << 20, store_raw_below=o["store_raw_below"],
        cgroup_root=o["cgroup_root"], restore_log_dir=o["restore_log_dir"], gpu_policy=o["gpu_policy"],
        gpu_margin=gpu_margin(o["gpu_margin"]), gpu_required=o["gpu_required"],
        keep_exited_instances=o["keep_exited_instances"], exited_instance_max_age=o["exited_instance_max_hours"] * 3600,
    )
    if o["io_threads"]:
        settings = dataclasses.replace(settings, io_threads=o["io_threads"])
    settings = dataclasses.replace(settings, remote=remote_config(o), fleet_keys=FleetKeys.load(
        o["signing_key"], tuple(o["trusted_key"]), o["require_signed"]))
    tcp = None
    if o["tcp"]:
        tcp = TcpListen(o["tcp"], o["tls_cert"], o["tls_key"], o["tls_client_ca"], o["insecure_loopback_tcp"])
    elif o["tls_cert"] or o["tls_key"] or o["tls_client_ca"] or o["insecure_loopback_tcp"]:
        raise ConfigInvalid(source="tcp", reason="TLS files or insecure_loopback_tcp given without a tcp address")
    listen = Listen(
        socket_path=o["socket"], socket_group=resolve_gid(o["socket_group"], "socket_group"),
        policy=AccessPolicy.from_names(o["allow_uid"], o["allow_gid"]), tcp=tcp,
        metrics_address=o["metrics_address"], drain_timeout=o["drain_timeout"],
    )
    return settings, listen


def gpu_margin(text: str) -> Margin:
    try:
        return Margin.parse(text)
    except ValueError as exc:
        raise ConfigInvalid(source="gpu_margin", reason=str(exc)) from None


def remote_config(o: dict[str, Any]) -> RemoteConfig | None:
    """The remote tier's settings (None when no endpoint and bucket are given); its key files
    are checked (Envelope.load)."""
    if not o["remote_endpoint"] and not o["remote_bucket"]:
        for option in ("push_after_checkpoint", "remote_encryption_key", "remote_read_key", "remote_allow_plaintext"):
            if o[option]:
                raise ConfigInvalid(source=option, reason="set, but no remote tier is configured "
                                    "(remote_endpoint, remote_bucket)")
        return None
    if not o["remote_endpoint"] or not o["remote_bucket"]:
        missing = "remote_endpoint" if not o["remote_endpoint"] else "remote_bucket"
        raise ConfigInvalid(source=missing, reason="the remote tier needs both remote_endpoint and remote_bucket")
    if not o["remote_endpoint"].startswith(("http://", "https://")):
        raise ConfigInvalid(source="remote_endpoint", reason=f"{o['remote_endpoint']!r} is not an http:// or "
                            "https:// URL")
    cfg = RemoteConfig(
        endpoint=o["remote_endpoint"].rstrip("/"), bucket=o["remote_bucket"], prefix=o["remote_prefix"].strip("/"),
        region=o["remote_region"], credentials_file=o["remote_credentials_file"], profile=o["remote_profile"],
        ca_file=o["remote_ca_file"], threads=o["remote_threads"], retries=o["remote_retries"],
        timeout=o["remote_timeout"], push_after_checkpoint=o["push_after_checkpoint"],
        encryption_key=o["remote_encryption_key"], read_keys=tuple(o["remote_read_key"]),
        allow_plaintext=o["remote_allow_plaintext"],
    )
    Envelope.load(cfg.encryption_key, cfg.read_keys, cfg.allow_plaintext)
    return cfg
