"""Password hashes: mosquitto's files (written by the real mosquitto_passwd) and our own formats."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from broker.auth import hashing
from broker.auth.password_file import PasswordFileError, load

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
needs_mosquitto_passwd = pytest.mark.skipif(
    not os.path.exists(MOSQUITTO_PASSWD), reason="mosquitto_passwd not installed (.ci/run installs mosquitto)"
)

USERS = {"alice": "s3cret", "bob": "pä ss:wörd", "carol": "x" * 200}


@needs_mosquitto_passwd
@pytest.mark.parametrize("algorithm, prefix", [("sha512-pbkdf2", "$7$"), ("sha512", "$6$")])
def test_file_written_by_mosquitto_passwd(tmp_path: Path, algorithm: str, prefix: str) -> None:
    path = tmp_path / "passwd"
    first = True
    for user, password in USERS.items():
        args = [MOSQUITTO_PASSWD, "-H", algorithm, *(["-c"] if first else []), "-b", str(path), user, password]
        subprocess.run(args, check=True, capture_output=True)
        first = False
    users = load(str(path))
    assert sorted(users) == sorted(USERS)
    for user, password in USERS.items():
        assert path.read_text().count(f"{user}:{prefix}") == 1
        assert hashing.verify(users[user], password.encode()), user
        assert not hashing.verify(users[user], (password + "x").encode()), user
        assert not hashing.verify(users[user], b""), user


@needs_mosquitto_passwd
def test_mosquitto_passwd_upgrade_of_plain_text(tmp_path: Path) -> None:
    """mosquitto_passwd -U output is read too (its $7$ with its default iterations)."""
    path = tmp_path / "plain"
    path.write_text("".join(f"{u}:{p}\n" for u, p in USERS.items() if ":" not in p))
    subprocess.run([MOSQUITTO_PASSWD, "-U", str(path)], check=True, capture_output=True)
    users = load(str(path))
    assert hashing.verify(users["alice"], b"s3cret")
    assert not hashing.verify(users["alice"], b"s3cre")


def test_mosquitto_7_against_hashlib() -> None:
    """$7$ is PBKDF2-HMAC-SHA512 of the password with the decoded salt (oracle: hashlib)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", b"pw", salt, 101)
    encoded = f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert hashing.verify(hashing.parse(encoded), b"pw")
    assert not hashing.verify(hashing.parse(encoded), b"pW")


def test_mosquitto_6_against_hashlib() -> None:
    salt = os.urandom(12)
    digest = hashlib.sha512(b"pw" + salt).digest()
    encoded = f"$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert hashing.verify(hashing.parse(encoded), b"pw")
    assert not hashing.verify(hashing.parse(encoded), b"p")


def test_our_argon2id_is_standard_phc() -> None:
    """Our Argon2id strings are checked by the library's own PHC verifier (independent of our parser)."""
    encoded = hashing.create(b"correct horse")
    assert encoded.startswith(f"$argon2id$v=19$m={hashing.ARGON2_MEMORY_KIB},t={hashing.ARGON2_ITERATIONS},p=1$")
    Argon2id.verify_phc_encoded(b"correct horse", encoded)
    parsed = hashing.parse(encoded)
    assert hashing.verify(parsed, b"correct horse")
    assert not hashing.verify(parsed, b"correct horse ")
    assert hashing.create(b"correct horse") != encoded  # a fresh salt each time


def test_our_pbkdf2_against_hashlib() -> None:
    encoded = hashing.create(b"pw", hashing.PBKDF2_SHA512)
    _, scheme, iterations, salt, digest = encoded.split("$")
    assert scheme == "pbkdf2-sha512" and iterations == f"i={hashing.PBKDF2_ITERATIONS}"
    pad = lambda text: text + "=" * (-len(text) % 4)  # noqa: E731
    expected = hashlib.pbkdf2_hmac("sha512", b"pw", base64.b64decode(pad(salt)), hashing.PBKDF2_ITERATIONS)
    assert base64.b64decode(pad(digest)) == expected
    assert hashing.verify(hashing.parse(encoded), b"pw")


@pytest.mark.parametrize(
    "line, message",
    [
        ("alice:plaintext", "not hashed"),
        ("alice:$5$abc$def", "unknown or malformed hash $5$"),
        ("alice:$7$101$!!!$abc", "unknown or malformed hash $7$"),
        ("alice:$7$101$YWJj$YWJj", "64 bytes"),
        ("alice:$argon2id$v=19$m=99999999,t=1,p=1$YWJj$YWJj", "out of range"),
        ("alice", "no password hash"),
        (":$6$YWJj$YWJj", "empty user name"),
    ],
)
def test_malformed_password_file_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    good = f"bob:{hashing.create(b'x', hashing.PBKDF2_SHA512)}"
    path = tmp_path / "passwd"
    path.write_text(f"# users\n{good}\n\n{line}\n")
    with pytest.raises(PasswordFileError) as error:
        load(str(path))
    assert str(error.value).startswith(f"{path}:4: ")
    assert message in str(error.value)


def test_duplicate_user_and_comments(tmp_path: Path) -> None:
    entry = hashing.create(b"x", hashing.PBKDF2_SHA512)
    path = tmp_path / "passwd"
    path.write_text(f"  # comment\n\nbob:{entry}\r\nbob:{entry}\n")
    with pytest.raises(PasswordFileError, match=r":4: user 'bob' appears twice"):
        load(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PasswordFileError, match="cannot read"):
        load(str(tmp_path / "nope"))
