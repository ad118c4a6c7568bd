"""Webhook signing secrets at rest: sealed with AES-256-GCM under an operator key, so a reader
of the database (a backup, a replica, a leaked dump) cannot sign webhooks with them.

The console seals a secret when it makes one; the notifier unseals it to sign. The key is the
secret setting `NEOBATCH_WEBHOOK_SECRET_KEY` (base64 of 32 bytes, the same on both); empty, secrets
are stored as they are (the local stack). A sealed value reads `sealed:v1:<base64 nonce+ct>`; a
value without that prefix is a clear one, so a key can be introduced on a running system.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Annotated

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from neobatch.common.errors import ConfigError
from neobatch.common.settings import Env, Settings

PREFIX = "sealed:v1:"
# Bound to the purpose: a sealed webhook secret is not valid as anything else.
AAD = b"neobatch webhook signing secret"


class UnsealError(Exception):
    """A sealed secret this key cannot open (another key, or damaged)."""


def _check_key(value: str) -> None:
    if value and len(_decode_key(value)) != 32:
        raise ConfigError("NEOBATCH_WEBHOOK_SECRET_KEY must be the base64 of 32 bytes")


def _decode_key(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("NEOBATCH_WEBHOOK_SECRET_KEY is not base64") from None


class SealingKey(Settings, frozen=True, kw_only=True):
    key: Annotated[
        str,
        Env(
            "NEOBATCH_WEBHOOK_SECRET_KEY",
            "Key sealing webhook signing secrets at rest (base64 of 32 bytes, the same for "
            "console and notifier; empty: stored unsealed)",
            secret=True,
            check=_check_key,
        ),
    ] = ""

    def seal(self, secret: str) -> str:
        if not self.key:
            return secret
        nonce = os.urandom(12)
        sealed = AESGCM(_decode_key(self.key)).encrypt(nonce, secret.encode(), AAD)
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def unseal(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored
        if not self.key:
            raise UnsealError("a sealed signing secret, and no NEOBATCH_WEBHOOK_SECRET_KEY")
        raw = base64.b64decode(stored.removeprefix(PREFIX))
        try:
            return AESGCM(_decode_key(self.key)).decrypt(raw[:12], raw[12:], AAD).decode()
        except InvalidTag:
            raise UnsealError("NEOBATCH_WEBHOOK_SECRET_KEY does not open this secret") from None
