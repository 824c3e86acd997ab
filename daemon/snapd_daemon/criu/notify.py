"""CRIU's action points as a typed interface (as go-criu's ``Notify``).

With ``notify_scripts`` set, CRIU stops at each action point and waits for an
ack. ``dispatch`` calls the matching method of a ``Notify``; every method
does nothing by default, so an operation overrides only the points it cares
about. Raising from a method makes CRIU abort the dump or restore (see
swrk.py for what CRIU 4.2.1 does and does not honour).
"""

from __future__ import annotations


class Notify:
    def pre_dump(self) -> None:
        """Before CRIU freezes the tree."""

    def post_dump(self) -> None:
        """Images written; the tree is still frozen by CRIU."""

    def network_lock(self) -> None:
        """Before the tree's network is locked."""

    def network_unlock(self) -> None:
        """After the tree's network is unlocked."""

    def pre_restore(self) -> None:
        """Before CRIU starts restoring."""

    def setup_namespaces(self, pid: int) -> None:
        """The restored root (``pid``) has its namespaces."""

    def post_setup_namespaces(self) -> None:
        """Namespaces are set up."""

    def post_restore(self, pid: int) -> None:
        """Every task is restored (root ``pid``), none runs yet."""

    def pre_resume(self) -> None:
        """Every task is restored, about to be resumed."""

    def post_resume(self) -> None:
        """The tasks run (or are left stopped when asked to)."""


def dispatch(notify: Notify, script: str, pid: int) -> None:
    """Call the method of ``notify`` for CRIU's action ``script`` (e.g. "post-dump");
    an action point this interface does not name is acknowledged without a call."""
    match script:
        case "pre-dump":
            notify.pre_dump()
        case "post-dump":
            notify.post_dump()
        case "network-lock":
            notify.network_lock()
        case "network-unlock":
            notify.network_unlock()
        case "pre-restore":
            notify.pre_restore()
        case "setup-namespaces":
            notify.setup_namespaces(pid)
        case "post-setup-namespaces":
            notify.post_setup_namespaces()
        case "post-restore":
            notify.post_restore(pid)
        case "pre-resume":
            notify.pre_resume()
        case "post-resume":
            notify.post_resume()
