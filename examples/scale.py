"""An example scheduler: one model from 0 to 2 replicas and back to 0, with the snapd client alone.

    snapd run --name demo --netns --publish 8000:8000 -- python3 server.py &   # the model's server
    python3 examples/scale.py --pid "$(cat /run/gpu-snapd/run/demo.pid)" --name demo

1. checkpoint: the running server (the init of a `snapd run` tree, so that its snapshot
   restores any number of times at once) is checkpointed once as snapshot NAME and
   stops; the model is at 0 replicas. Without --pid the step is skipped and NAME must
   exist.
2. 0 -> 2: two replicas restored at once (``restore_replicas``), each in fresh
   namespaces with its listening ports published on free host ports; the step ends
   when every published port accepts a connection.
3. 2 -> 0: each replica's tree is stopped (SIGTERM to its root, which passes it on to the
   server; SIGKILL after --grace seconds); the step ends when every root is gone.

Each step's time is printed ("step <name> <seconds> s"), then a JSON line per replica.
It runs as root on the daemon's host (step 3 signals the restored trees). Exit status:
the daemon's exit code for a failed call (SnapdClientError.exit_code), 1 when a replica
does not answer or end in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from snapd_client import AsyncSnapdClient, SnapdClientError
from snapd_client.client import default_target


def ended(pid: int) -> bool:
    """The process is gone, or a zombie (it has exited; its parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def accepts(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {seconds:g} s")
        await asyncio.sleep(0.05)


async def stop(root: int, grace: float) -> None:
    """SIGTERM to the replica's root, SIGKILL if it has not ended after ``grace`` seconds."""
    os.kill(root, signal.SIGTERM)

    async def gone() -> bool:
        return ended(root)

    try:
        await until(gone, grace, f"pid {root} to end on SIGTERM")
    except TimeoutError:
        os.kill(root, signal.SIGKILL)
        await until(gone, 30, f"pid {root} to end on SIGKILL")


async def scale(target: str, name: str, pid: int, replicas: int, grace: float) -> None:
    async with AsyncSnapdClient(target) as client:
        began = time.monotonic()
        if pid:
            snap = await client.checkpoint(pid, name=name)
            print(f"step checkpoint {time.monotonic() - began:.2f} s (snapshot {snap.id}, "
                  f"{snap.raw_bytes / 2**20:.0f} MiB)", flush=True)
        began = time.monotonic()
        outcomes = await client.restore_replicas(name, replicas)
        failed = [o for o in outcomes if isinstance(o, SnapdClientError)]
        running = [o for o in outcomes if not isinstance(o, SnapdClientError)]
        addresses = [p.address for r in running for p in r.published]

        async def all_answer() -> bool:
            return all(await asyncio.gather(*(accepts(a) for a in addresses)))

        await until(all_answer, 60, f"the replicas' ports {addresses} to accept connections")
        print(f"step 0->{replicas} {time.monotonic() - began:.2f} s", flush=True)
        for r in running:
            print(json.dumps({"root_pid": r.root_pid, "pids": list(r.pids), "gpus": dict(r.gpus),
                              "published": {p.port: p.address for p in r.published},
                              "restore_seconds": round(r.duration_seconds, 3)}), flush=True)
        began = time.monotonic()
        await asyncio.gather(*(stop(r.root_pid, grace) for r in running))
        print(f"step {replicas}->0 {time.monotonic() - began:.2f} s", flush=True)
        if failed:
            raise failed[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=default_target(), help="daemon address [default: $SNAPD_TARGET or the "
                        "system socket]")
    parser.add_argument("--name", required=True, help="snapshot name of the model")
    parser.add_argument("--pid", type=int, default=0, help="checkpoint this `snapd run` init first (0: NAME exists)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--grace", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL when scaling down")
    args = parser.parse_args()
    try:
        asyncio.run(scale(args.target, args.name, args.pid, args.replicas, args.grace))
    except SnapdClientError as err:
        print(f"scale: {err.error_class}: {err.message}", file=sys.stderr)
        sys.exit(err.exit_code)
    except TimeoutError as err:
        print(f"scale: timed out waiting for {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
