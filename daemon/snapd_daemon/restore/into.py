"""Where a restored tree goes: the cgroup a restore asked for, or a sandbox (``--into PID``).

A tree goes into a container or pod sandbox (host/sandbox.py) only when it was
started with `snapd run`: the init of a pid namespace of its own, with a mount
namespace of its own. Those two CRIU makes anew at every restore (a sandbox's
pid namespace cannot be joined, and the tree's files are the node's, as at
checkpoint); the sandbox's network, UTS and IPC namespaces are joined, which
only works for a tree that shared the host's at checkpoint. So a tree of the
host's pid namespace is refused, and so is one started with `snapd run --netns`
(CRIU would restore its own network namespace over the sandbox's, and the pod's
address would not reach it: take that server's snapshot without --netns).
The manifest's record of a network namespace of its own is checked before
anything is created; the images, once staged and before CRIU runs, for any
network, UTS or IPC namespace of the tree's own (``check_images``): CRIU would
restore those over the sandbox's, writing the tree's hostname or IPC objects
into the sandbox's own namespaces.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from snapd_daemon.criu.images import own_namespaces
from snapd_daemon.errors import SandboxRefused
from snapd_daemon.host import sandbox
from snapd_daemon.host.cgroups import Cgroup, CgroupRequest, Needs
from snapd_daemon.host.sandbox import JOINED, Sandbox
from snapd_daemon.runtime import Runtime
from snapd_daemon.snapshots.manifest import Manifest


def refusal(m: Manifest) -> str:
    """Why ``m`` cannot go into a sandbox ("" when it can)."""
    if not m.replicable:
        return ("its tree shared the host's pid namespace; only trees started with `snapd run` (the init of a pid "
                "namespace and a mount namespace of their own) can go into a sandbox")
    if not m.own_mntns:
        return "its tree had no mount namespace of its own (start the server with `snapd run`)"
    if m.own_netns:
        return ("its tree was started with `snapd run --netns`: CRIU restores that network namespace over the "
                "sandbox's, so the sandbox's address would not reach it; checkpoint the server started with "
                "`snapd run` without --netns (its ports are then the sandbox's)")
    return ""


def check_images(m: Manifest, images_dir: Path) -> None:
    """SandboxRefused when the staged images hold a namespace the sandbox's would be joined for."""
    own = own_namespaces(images_dir, m.image_pid(m.root_pid)) & set(JOINED)
    if own:
        raise SandboxRefused(snapshot_id=m.id, reason=f"its tree had {' and '.join(sorted(own))} namespace(s) of its "
                             "own, which CRIU would restore over the sandbox's; only a tree that shared the host's "
                             "can join a sandbox")


@contextmanager
def target(rt: Runtime, m: Manifest, into: int, request: CgroupRequest | None, needs: Needs,
           operation_id: str) -> Iterator[tuple[Sandbox | None, Cgroup | None]]:
    """(the sandbox of pid ``into``, the new group below its cgroup), or (None, the group
    ``request`` names, None when it names none; the API refuses both at once), for the
    block; a failure inside it removes the group it created, and so does the end of the
    instance the block creates (``InstanceTable.placing``), should its tree outlive that."""
    if not into:
        with rt.cgroups.placement(request, needs) as cgroup:
            yield None, cgroup
        return
    why = refusal(m)
    if why:
        raise SandboxRefused(snapshot_id=m.id, reason=why)
    with (sandbox.open_sandbox(into) as box, sandbox.placement(box, f"snapd-{operation_id}", needs) as cgroup,
          rt.instances.placing(operation_id, (box.pid, box.start_time, box.cgroup), cgroup.proc_path)):
        yield box, cgroup
