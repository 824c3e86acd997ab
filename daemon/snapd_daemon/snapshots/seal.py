"""Manifest seals: every manifest carries the BLAKE3 digest of its own canonical content, and
no manifest is used before that digest was checked.

Canonical content: the manifest's JSON object as parsed, without its members ``seal``
and ``signature``, written by ``json.dumps`` with keys sorted at every level, no
whitespace (separators ``,`` and ``:``), every non-ASCII character escaped as
``\\uXXXX``, and encoded as UTF-8 (hence ASCII). Every other member counts, those
this snapd does not know included (a newer snapd's additions are sealed too). Where
a member appears twice in the text, the last one counts, as for every reader here.
The seal is the lower-case hex BLAKE3 digest (64 digits) of those bytes, stored as
the string member ``seal``; ``signature`` (signing.py) signs the seal.

``open_manifest`` is the one way from bytes to a ``Manifest``: the local store's
manifests at start and at fsck, a remote manifest (pull, on-demand restore, remote
listing) and an import's manifest all go through it. It refuses with
ManifestDamaged, naming the manifest and, for a seal that does not match, both
digests: bytes that are not JSON, a seal that does not match, fields missing or of
the wrong type, and a manifest that contradicts itself (consistency.py), so that
even a manifest sealed anew after an edit restores no wrong memory where a cheap
check can tell.

Manifests written before seals existed (no ``seal`` member, and no member this snapd
does not know: a sealed manifest whose ``seal`` name was damaged has its digest under
another name) load as they are, checked for consistency only, and are sealed when next
written: the local store rewrites them sealed at its first start with this version
(catalog.py); push and export send them sealed. What they said before that write is
trusted as it was before seals: unsealed bytes are not authenticated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any

import blake3

from snapd_daemon.errors import ManifestDamaged
from snapd_daemon.snapshots.consistency import ID_RE, inconsistency
from snapd_daemon.snapshots.manifest import Manifest

SEAL = "seal"
SIGNATURE = "signature"
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_KNOWN = frozenset(f.name for f in fields(Manifest))


def canonical(content: dict[str, Any]) -> bytes:
    """The canonical bytes of a manifest's JSON object (``seal`` and ``signature`` left out)."""
    body = {k: v for k, v in content.items() if k not in (SEAL, SIGNATURE)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@dataclass(frozen=True)
class Opened:
    """A manifest read back: its record, its seal ("" for one written before seals), and
    its signature member as stored (None: unsigned)."""

    manifest: Manifest
    seal: str
    signature: Any


def open_manifest(data: bytes, where: str, fallback_id: str = "?", action: str = "") -> Opened:
    """Parse manifest bytes read from ``where`` after checking their seal and consistency;
    ManifestDamaged (naming ``where``, the snapshot id — ``fallback_id`` until the bytes
    name one — and the problem; ``action`` says what happens now) otherwise."""
    snapshot_id = fallback_id

    def damaged(problem: str) -> ManifestDamaged:
        return ManifestDamaged(where=where, snapshot_id=snapshot_id, problem=problem, action=action)

    try:
        content = json.loads(data.decode())
    except UnicodeDecodeError as exc:
        raise damaged(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise damaged(f"not JSON ({exc})") from None
    if not isinstance(content, dict):
        raise damaged(f"not a JSON object but a {type(content).__name__}")
    if isinstance(content.get("id"), str) and ID_RE.fullmatch(content["id"]):
        snapshot_id = content["id"]
    stored = content.get(SEAL)
    if stored is None:
        unknown = sorted(set(content) - _KNOWN - {SIGNATURE})
        if unknown:
            raise damaged(f"it has no seal, yet member(s) {', '.join(repr(k[:40]) for k in unknown[:4])} that only "
                          "a sealing snapd writes (a damaged seal member?)")
        if SIGNATURE in content:
            raise damaged("it has a signature but no seal")
    elif not isinstance(stored, str) or not _DIGEST_RE.fullmatch(stored):
        raise damaged(f"its seal {str(stored)[:80]!r} is not a BLAKE3 digest (64 hex digits)")
    else:
        computed = digest(canonical(content))
        if computed != stored:
            raise damaged(f"its seal does not match its content: sealed {stored}, content hashes to {computed}")
    try:
        manifest = Manifest.from_dict(content)
    except KeyError as exc:
        raise damaged(f"field {exc.args[0]!r} is missing") from None
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise damaged(f"a field is not of its type ({exc})") from None
    problem = inconsistency(manifest)
    if problem:
        raise damaged(f"it contradicts itself: {problem}")
    return Opened(manifest, stored or "", content.get(SIGNATURE))
