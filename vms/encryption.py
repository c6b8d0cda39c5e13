"""Encryption at rest for the few secrets Vapor must hold for a while (VNC passwords).

The key is derived from SECRET_KEY, so a database dump alone does not reveal
them. The provisioning task decrypts the password once, to put it in the
domain XML, and then erases it: from then on only libvirt holds it.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    digest = hashlib.sha256(b"vapor-secrets:" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(plain: str) -> str:
    return _fernet().encrypt(plain.encode()).decode()


def decrypt(token: str) -> str | None:
    """None for an empty token, or one made with another SECRET_KEY."""
    if not token:
        return None
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        return None
