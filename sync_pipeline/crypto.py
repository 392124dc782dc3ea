"""Secrets at rest (CONTRACT §6): tokens for outside services are encrypted with a key derived
from SYNC_SECRET_KEY; Sync API tokens are kept only as hashes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_KEY_ENV = "SYNC_SECRET_KEY"
MIN_SECRET_KEY_LENGTH = 32


class SecretKeyError(ValueError):
    """SYNC_SECRET_KEY is missing, too short, or not the key the secrets were stored with."""


def hash_token(token: str) -> str:
    """The SHA-256 of a Sync API token, as stored and looked up.

    A plain hash (no salt, no stretching) is what a bearer token needs: tokens are long random
    secrets, not passwords, and the hash must be deterministic to find the merchant by it.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_equal(given: str, expected_hash: str | None) -> bool:
    return expected_hash is not None and hmac.compare_digest(hash_token(given), expected_hash)


class SecretBox:
    """Encrypts and decrypts the outside services' tokens (Fernet: AES-128-CBC with HMAC-SHA256)."""

    def __init__(self, secret_key: str):
        if not secret_key or len(secret_key) < MIN_SECRET_KEY_LENGTH:
            raise SecretKeyError(
                f"{SECRET_KEY_ENV} must be set to a string of at least {MIN_SECRET_KEY_LENGTH} characters"
                " to store merchants' tokens"
            )
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"sync_pipeline/merchant-secrets", info=b"fernet-v1"
        ).derive(secret_key.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    @classmethod
    def from_env(cls) -> "SecretBox":
        return cls(os.environ.get(SECRET_KEY_ENV, ""))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                f"a stored token cannot be decrypted: {SECRET_KEY_ENV} is not the key it was stored with"
            ) from None
