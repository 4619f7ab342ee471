"""Password hashes: read mosquitto's, write our own self-describing Argon2id or PBKDF2 ones.

Formats (one per line of a password file, after ``user:``):

- ``$argon2id$v=19$m=KIB,t=ITER,p=LANES$SALT$HASH`` (ours, the default): the PHC string
  format that libargon2, argon2-cffi and passlib use, so other tools can check it too.
- ``$pbkdf2-sha512$i=ITER$SALT$HASH`` (ours, optional): PBKDF2-HMAC-SHA512, PHC style.
- ``$7$ITER$SALT$HASH`` (mosquitto 2's default): PBKDF2-HMAC-SHA512, 64-byte hash.
- ``$6$SALT$HASH`` (mosquitto 1.x): SHA-512 of password + salt, one round.

SALT and HASH are base64 (PHC strings without padding, mosquitto's with). All the
cryptography is the ``cryptography`` package's; comparisons use ``hmac.compare_digest``.
``verify`` is a plain top-level function so that a process pool can run it: the
hashes hold the GIL while they run (measured), so threads would stall the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

ARGON2ID = "argon2id"
PBKDF2_SHA512 = "pbkdf2-sha512"
ALGORITHMS = (ARGON2ID, PBKDF2_SHA512)

# OWASP's Argon2id choice of m=12 MiB, t=3, p=1 (equivalent in strength to its m=19 MiB, t=2):
# little memory per check, so a Raspberry Pi with 1 GB can run several at once.
# Measured: see docs/auth.md (python -m bench.auth_cost).
ARGON2_MEMORY_KIB = 12288
ARGON2_ITERATIONS = 3
ARGON2_LANES = 1
ARGON2_SALT_BYTES = 16
ARGON2_HASH_BYTES = 32
# OWASP 2023 for PBKDF2-HMAC-SHA512.
PBKDF2_ITERATIONS = 210_000
PBKDF2_SALT_BYTES = 16
PBKDF2_HASH_BYTES = 64

# Bounds on what a file may ask for: a typo must not make every login take minutes.
_MAX_ARGON2_MEMORY_KIB = 1 << 20  # 1 GiB
_MAX_ITERATIONS = 10_000_000


class BadHash(ValueError):
    """A password file entry that is not a hash we can check; the message says why."""


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A parsed hash: what ``verify`` needs, checked once when the file is read."""

    scheme: str  # "argon2id" | "pbkdf2-sha512" | "7" | "6"
    salt: bytes
    digest: bytes
    iterations: int = 0
    memory_kib: int = 0
    lanes: int = 0


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadHash(f"the {what} is not valid base64") from None


_ARGON2 = re.compile(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")
_PBKDF2 = re.compile(r"\$pbkdf2-sha512\$i=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")
_MOSQ7 = re.compile(r"\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
_MOSQ6 = re.compile(r"\$6\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


def parse(encoded: str) -> PasswordHash:
    """Parse one encoded hash, or raise BadHash saying what is wrong with it."""
    if match := _ARGON2.fullmatch(encoded):
        memory, iterations, lanes = (int(match.group(i)) for i in (1, 2, 3))
        if not (8 * lanes <= memory <= _MAX_ARGON2_MEMORY_KIB and 1 <= iterations <= _MAX_ITERATIONS and 1 <= lanes <= 255):
            raise BadHash(f"argon2id parameters out of range (m={memory}, t={iterations}, p={lanes})")
        return PasswordHash(
            ARGON2ID, _b64(match.group(4), "salt"), _b64(match.group(5), "hash"), iterations, memory, lanes
        )
    if match := _PBKDF2.fullmatch(encoded):
        iterations = int(match.group(1))
        if not 1 <= iterations <= _MAX_ITERATIONS:
            raise BadHash(f"pbkdf2-sha512 iteration count out of range ({iterations})")
        return PasswordHash(PBKDF2_SHA512, _b64(match.group(2), "salt"), _b64(match.group(3), "hash"), iterations)
    if match := _MOSQ7.fullmatch(encoded):
        iterations = int(match.group(1))
        if not 1 <= iterations <= _MAX_ITERATIONS:
            raise BadHash(f"$7$ iteration count out of range ({iterations})")
        digest = _b64(match.group(3), "hash")
        if len(digest) != 64:
            raise BadHash("a $7$ hash must be 64 bytes of PBKDF2-SHA512")
        return PasswordHash("7", _b64(match.group(2), "salt"), digest, iterations)
    if match := _MOSQ6.fullmatch(encoded):
        digest = _b64(match.group(2), "hash")
        if len(digest) != 64:
            raise BadHash("a $6$ hash must be 64 bytes of SHA-512")
        return PasswordHash("6", _b64(match.group(1), "salt"), digest)
    if not encoded.startswith("$"):
        raise BadHash("the password is not hashed (plain text?); hash the file with: python -m broker passwd -U FILE")
    scheme = encoded[1:].split("$", 1)[0]
    raise BadHash(
        f"unknown or malformed hash ${scheme}$ (expected $argon2id$, $pbkdf2-sha512$, or mosquitto's $7$ or $6$)"
    )


def _derive(parsed: PasswordHash, password: bytes) -> bytes:
    scheme = parsed.scheme
    if scheme == ARGON2ID:
        return Argon2id(
            salt=parsed.salt,
            length=len(parsed.digest),
            iterations=parsed.iterations,
            lanes=parsed.lanes,
            memory_cost=parsed.memory_kib,
        ).derive(password)
    if scheme in (PBKDF2_SHA512, "7"):
        return PBKDF2HMAC(hashes.SHA512(), len(parsed.digest), parsed.salt, parsed.iterations).derive(password)
    # mosquitto's $6$: SHA-512 over the password, then the salt (mosquitto_passwd.c).
    return hashlib.sha512(password + parsed.salt).digest()


def verify(parsed: PasswordHash, password: bytes) -> bool:
    """True if ``password`` matches; the comparison takes the same time whatever differs."""
    if not parsed.digest:
        return False
    return hmac.compare_digest(_derive(parsed, password), parsed.digest)


def _unpadded_b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def create(password: bytes, algorithm: str = ARGON2ID) -> str:
    """A new encoded hash with a random salt, in one of our formats."""
    if algorithm == ARGON2ID:
        kdf = Argon2id(
            salt=os.urandom(ARGON2_SALT_BYTES),
            length=ARGON2_HASH_BYTES,
            iterations=ARGON2_ITERATIONS,
            lanes=ARGON2_LANES,
            memory_cost=ARGON2_MEMORY_KIB,
        )
        return kdf.derive_phc_encoded(password)
    if algorithm == PBKDF2_SHA512:
        salt = os.urandom(PBKDF2_SALT_BYTES)
        digest = PBKDF2HMAC(hashes.SHA512(), PBKDF2_HASH_BYTES, salt, PBKDF2_ITERATIONS).derive(password)
        return f"$pbkdf2-sha512$i={PBKDF2_ITERATIONS}${_unpadded_b64(salt)}${_unpadded_b64(digest)}"
    raise ValueError(f"unknown hash algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")


# A hash of a random password with the default parameters: checked against when the user is
# unknown, so that a refusal takes as long for a missing user as for a wrong password.
def dummy_hash() -> PasswordHash:
    return parse(create(os.urandom(16)))
