"""Which policy versions this process may publish and adopt: signed by default, unsigned only when asked.

A checksum proves a version's bytes are whole, not who wrote them: with no key, anyone who
can write to the policies topic can make every scorer serve any model. So a process with no
``RECSYS_HMAC_KEY`` refuses to publish or adopt anything unless ``RECSYS_ALLOW_UNSIGNED=1``
says otherwise, which is logged at start and exported as ``recsys_policy_unsigned_allowed``.
A key rotation keeps the previous key valid for verification until a deadline, so versions
published before the switch keep verifying while every role moves to the new key.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

from prometheus_client import Gauge

from stream.config import Settings

log = logging.getLogger(__name__)

UNSIGNED_ALLOWED = Gauge("recsys_policy_unsigned_allowed",
                         "1 when this process publishes or adopts unsigned policy versions (RECSYS_ALLOW_UNSIGNED).",
                         ["component"])


class UnsignedRefused(RuntimeError):
    """No signing key, and unsigned versions were not allowed explicitly."""


NO_KEY = ("RECSYS_HMAC_KEY is not set: policy versions would be unsigned, and anyone who can write to the "
          "policies topic could serve any model. Set it on every role (`recsys-stream keygen` prints a new "
          "key), or set RECSYS_ALLOW_UNSIGNED=1 to run without signatures on purpose.")


@dataclass(frozen=True)
class Trust:
    signing_key: bytes | None
    previous_key: bytes | None = None
    previous_until: float | None = None
    allow_unsigned: bool = False

    def verification_keys(self, now: float | None = None) -> list[bytes]:
        """Keys a signature may match now: the current one, and the previous one inside its window."""
        keys = [self.signing_key] if self.signing_key else []
        if self.previous_key and self.previous_until is not None and (now or time.time()) < self.previous_until:
            keys.append(self.previous_key)
        return keys

    def require_key(self) -> None:
        """``UnsignedRefused`` unless there is a key or unsigned versions were allowed explicitly."""
        if self.signing_key is None and not self.allow_unsigned:
            raise UnsignedRefused(NO_KEY)


def trust_of(settings: Settings) -> Trust:
    def secret(value) -> bytes | None:
        return value.get_secret_value().encode() if value is not None and value.get_secret_value() else None

    if settings.hmac_previous_key is not None and settings.hmac_previous_key_until is None:
        raise UnsignedRefused("RECSYS_HMAC_PREVIOUS_KEY needs RECSYS_HMAC_PREVIOUS_KEY_UNTIL (epoch seconds): "
                              "a previous key that never expires is a second key forever")
    return Trust(secret(settings.hmac_key), secret(settings.hmac_previous_key), settings.hmac_previous_key_until,
                 settings.allow_unsigned)


def announce(settings: Settings, component: str) -> Trust:
    """Check a role may start (it has a key, or unsigned was allowed), say so in the log and in a metric."""
    trust = trust_of(settings)
    trust.require_key()
    UNSIGNED_ALLOWED.labels(component).set(1 if trust.allow_unsigned else 0)
    if trust.allow_unsigned:
        log.warning("%s: RECSYS_ALLOW_UNSIGNED=1: unsigned policy versions are published and adopted", component)
    if trust.previous_key:
        log.info("%s: the previous HMAC key verifies until %s", component,
                 time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(trust.previous_until)))
    return trust


def new_key() -> str:
    """A new signing key: 32 random bytes, hex."""
    return secrets.token_hex(32)
