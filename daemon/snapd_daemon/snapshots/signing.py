"""Fleet signatures on manifests: Ed25519 over the seal, made where a snapshot leaves a host
(push, export) and checked where one arrives (pull, on-demand restore, import).

A signature signs ``snapd-manifest-seal:`` followed by the manifest's seal (seal.py), so
it covers every byte of the manifest's content. It is stored in the manifest as
``"signature": {"key": KEY_ID, "ed25519": BASE64}``. A key id is the first 16 hex digits
of the BLAKE3 digest of the raw 32-byte public key; messages name keys by it.

``FleetKeys`` holds this host's signing key (optional) and the public keys it trusts.
Checking a manifest that arrives: a signature by a trusted key must verify
(SignatureInvalid otherwise, also with ``require_signed`` off: a wrong signature
is never ignored); a signature by a key not trusted here, or none, is refused
(ManifestUnsigned) only with ``require_signed``. A manifest taken into the local
store is sealed anew with this store's sizes and kept unsigned: the store's own
bytes are authenticated by their seal; signatures guard what crosses hosts.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from snapd_daemon.errors import ConfigInvalid, ManifestUnsigned, SignatureInvalid

_CONTEXT = b"snapd-manifest-seal:"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return blake3.blake3(raw).hexdigest()[:16]


@dataclass(frozen=True)
class FleetKeys:
    signing: Ed25519PrivateKey | None = None
    trusted: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    require_signed: bool = False

    @classmethod
    def load(cls, signing_key: Path | None, trusted_keys: tuple[Path, ...], require_signed: bool) -> FleetKeys:
        """From PEM files: an Ed25519 private key (``openssl genpkey -algorithm ed25519``) and
        public keys (``openssl pkey -pubout``); ConfigInvalid naming the key that is wrong. The
        signing key's own public key is trusted too."""
        signing = _private(signing_key) if signing_key else None
        trusted = {key_id(k): k for k in (_public(p) for p in trusted_keys)}
        if signing is not None:
            trusted[key_id(signing.public_key())] = signing.public_key()
        if require_signed and not trusted:
            raise ConfigInvalid(source="require_signed", reason="set, but no trusted_key (nor a signing_key) are "
                                "given: every snapshot that arrives would be refused")
        return cls(signing, trusted, require_signed)

    @property
    def signing_id(self) -> str:
        return key_id(self.signing.public_key()) if self.signing is not None else ""

    def sign(self, seal: str) -> dict[str, str]:
        """The ``signature`` member for a manifest sealed ``seal`` (a signing key is configured)."""
        assert self.signing is not None
        sig = self.signing.sign(_CONTEXT + seal.encode())
        return {"key": self.signing_id, "ed25519": base64.b64encode(sig).decode()}

    def signer(self) -> Callable[[str], dict[str, str]] | None:
        """``Manifest.to_json``'s ``sign``: None without a signing key."""
        return self.sign if self.signing is not None else None

    def check(self, seal: str, signature: Any, snapshot_id: str, where: str) -> str:
        """Check the signature of an arriving manifest sealed ``seal``; the key id that signed
        it ("" if none that is trusted here). Raises as the module docstring says."""
        if signature is None:
            if self.require_signed:
                raise ManifestUnsigned(snapshot_id=snapshot_id, where=where, problem="it is not signed (keys "
                                       f"trusted here: {', '.join(sorted(self.trusted))})")
            return ""
        kid = signature.get("key") if isinstance(signature, dict) else None
        shown = str(kid)[:40] if kid is not None else "(none named)"
        if not seal:
            raise SignatureInvalid(snapshot_id=snapshot_id, where=where, key_id=shown,
                                   problem="covers no seal (the manifest is unsealed)")
        public = self.trusted.get(kid) if isinstance(kid, str) else None
        if public is None:
            if self.require_signed:
                raise ManifestUnsigned(snapshot_id=snapshot_id, where=where,
                                       problem=f"it is signed by key {shown}, which is not one of trusted_key "
                                       f"({', '.join(sorted(self.trusted)) or 'none'})")
            return ""
        try:
            sig = base64.b64decode(signature.get("ed25519", ""), validate=True)
            public.verify(sig, _CONTEXT + seal.encode())
        except (InvalidSignature, binascii.Error, TypeError, ValueError):
            raise SignatureInvalid(snapshot_id=snapshot_id, where=where, key_id=kid,
                                   problem="does not verify") from None
        return kid


def _private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigInvalid(source=f"signing_key {path}", reason=f"not a readable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigInvalid(source=f"signing_key {path}", reason=f"a {type(key).__name__}, not an Ed25519 key")
    return key


def _public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigInvalid(source=f"trusted_key {path}", reason=f"not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigInvalid(source=f"trusted_key {path}", reason=f"a {type(key).__name__}, not an Ed25519 key")
    return key
