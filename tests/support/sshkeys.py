"""OpenSSH public keys for tests, made fresh (no key material in the repository)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def _line(key: object, comment: str) -> str:
    public = key.public_key()  # type: ignore[attr-defined]
    data = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{data} {comment}".rstrip()


def ed25519_key(comment: str = "alice@example") -> str:
    return _line(ed25519.Ed25519PrivateKey.generate(), comment)


def rsa_key(bits: int = 2048, comment: str = "") -> str:
    return _line(rsa.generate_private_key(public_exponent=65537, key_size=bits), comment)


def ecdsa_key(comment: str = "") -> str:
    return _line(ec.generate_private_key(ec.SECP256R1()), comment)


def fingerprint(line: str) -> str:
    """What `ssh-keygen -l` prints for the key, computed independently of Vapor's code."""
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
