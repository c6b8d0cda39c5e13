"""Encryption at rest for the few secrets Vapor must hold for a while (VNC passwords).

The key is its own (VAPOR_VNC_KEY, or the file `vnc_key` Vapor keeps in its
data directory), never derived from SECRET_KEY: a database dump alone does
not reveal the passwords, and changing SECRET_KEY (which signs sessions)
does not make them unreadable. The provisioning task decrypts the password
once, to put it in the domain XML, and then erases it: from then on only
libvirt holds it.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    digest = hashlib.sha256(b"vapor-vnc-passwords:" + settings.VAPOR.vnc_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(plain: str) -> str:
    return _fernet().encrypt(plain.encode()).decode()


def decrypt(token: str) -> str | None:
    """None for an empty token, or one made with another VNC key."""
    if not token:
        return None
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        return None
