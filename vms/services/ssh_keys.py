"""OpenSSH public keys: parsing, fingerprints, and the keys users keep on their profile.

A key is one line, `<type> <base64> [comment]`. It is accepted when its type
is one OpenSSH offers, its base64 decodes, the type embedded in the decoded
blob is the one the line states, and (for the types `cryptography` reads) the
key itself loads. The fingerprint is OpenSSH's: SHA256 of the blob, base64
without padding (what `ssh-keygen -l` prints).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from django.db import IntegrityError, transaction

from projects.access import SYSTEM, Actor, audit
from vaporsite.errors import Conflict, InvalidInput, NotFound
from vms.cloud_init_models import SshPublicKey

log = logging.getLogger("vapor.vms")

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
MIN_RSA_BITS = 2048  # OpenSSH refuses shorter RSA keys for signatures since 8.8; shorter ones are weak anyway
MAX_KEY_CHARS = 16384


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: bytes
    comment: str

    @property
    def line(self) -> str:
        """The key as one authorized_keys line (type, base64, comment)."""
        data = base64.b64encode(self.blob).decode()
        return f"{self.type} {data} {self.comment}".rstrip()

    @property
    def fingerprint(self) -> str:
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")


def _embedded_type(blob: bytes) -> str | None:
    """The string the blob starts with (SSH wire format: uint32 length, bytes), or None."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length > 64 or len(blob) < 4 + length:
        return None
    try:
        return blob[4 : 4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None


def parse_public_key(text: str, *, field: str) -> PublicKey:
    """The key in `text`, or InvalidInput on `field` saying what is wrong."""
    if not isinstance(text, str) or len(text) > MAX_KEY_CHARS:
        raise InvalidInput(f"must be one OpenSSH public key of at most {MAX_KEY_CHARS} characters", field=field)
    line = text.strip()
    if not line or "\n" in line or "\r" in line:
        raise InvalidInput("must be one OpenSSH public key on one line (type, base64, optional comment)", field=field)
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise InvalidInput("an OpenSSH public key is `<type> <base64> [comment]`: the base64 part is missing", field=field)
    kind, data = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if kind not in KEY_TYPES:
        raise InvalidInput(f"unknown key type {kind[:40]!r}: OpenSSH public keys are {', '.join(KEY_TYPES)}", field=field)
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"the {kind} key's data is not valid base64", field=field) from None
    embedded = _embedded_type(blob)
    if embedded != kind:
        said = f"{embedded!r}" if embedded else "no key type"
        raise InvalidInput(f"the key's data holds {said}, not {kind}: not an OpenSSH {kind} public key", field=field)
    if not comment.isprintable():
        raise InvalidInput("the key's comment must hold printable characters only", field=field)
    if not kind.startswith("sk-"):
        try:
            key = load_ssh_public_key(f"{kind} {data}".encode())
        except (ValueError, UnsupportedAlgorithm):
            raise InvalidInput(f"the key's data is not a valid {kind} public key", field=field) from None
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            raise InvalidInput(f"an RSA key must have at least {MIN_RSA_BITS} bits; this one has {key.key_size}", field=field)
    return PublicKey(type=kind, blob=blob, comment=comment)


def user_keys(user: Any) -> list[str]:
    """The authorized_keys lines `user` keeps on their profile (none for the system or an anonymous user)."""
    if user is None or not user.is_authenticated:
        return []
    return list(SshPublicKey.objects.filter(user=user).order_by("name", "pk").values_list("key", flat=True))


def ssh_key_create(*, name: str, key: str, actor: Actor = SYSTEM) -> SshPublicKey:
    """Keep `key` on the actor's profile under `name` (400 on `name`/`key`; 409 for a taken name or the same key)."""
    user = actor.user
    if user is None or not user.is_authenticated:
        raise InvalidInput("only a signed-in user keeps SSH keys", field="user")
    name = (name or "").strip()
    if not name or len(name) > 100 or not name.isprintable():
        raise InvalidInput("must be 1-100 printable characters", field="name")
    parsed = parse_public_key(key, field="key")
    mine = SshPublicKey.objects.filter(user=user)
    if mine.filter(fingerprint=parsed.fingerprint).exists():
        raise Conflict(f"you already keep this key ({parsed.fingerprint})", field="key", code="key_exists")
    try:
        with transaction.atomic():
            row = SshPublicKey.objects.create(user=user, name=name, key=parsed.line, fingerprint=parsed.fingerprint)
            audit(actor, "sshkey.create", target=f"SSH key {name}", project=None, detail=parsed.fingerprint)
    except IntegrityError:
        raise Conflict(f"you already keep a key named {name!r}", field="name", code="name_taken") from None
    log.info("SSH key %s (%s) added for %s", name, parsed.fingerprint, actor.name)
    return row


def ssh_key_delete(*, key_id: int, actor: Actor = SYSTEM) -> None:
    """Delete one of the actor's own keys (404 for anyone else's: they are out of reach)."""
    user = actor.user
    row = SshPublicKey.objects.filter(pk=key_id, user=user).first() if user is not None and user.is_authenticated else None
    if row is None:
        raise NotFound(f"you keep no SSH key {key_id}", code="not_found")
    with transaction.atomic():
        audit(actor, "sshkey.delete", target=f"SSH key {row.name}", project=None, detail=row.fingerprint)
        row.delete()
