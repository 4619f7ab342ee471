"""python -m broker passwd: the mosquitto_passwd workflow, on real files."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from broker.auth import hashing
from broker.auth.password_file import load

ROOT = Path(__file__).resolve().parents[2]


def passwd(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "passwd", *args],
        input=stdin, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def check(path: Path, user: str, password: str) -> bool:
    return hashing.verify(load(str(path))[user], password.encode())


def test_create_prompt_twice_add_change_delete(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    done = passwd("-c", str(path), "alice", stdin="first pw\nfirst pw\n")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("alice:$argon2id$v=19$")
    assert check(path, "alice", "first pw")

    assert passwd("-b", str(path), "bob", "b:pw").returncode == 0
    assert passwd("-H", "pbkdf2-sha512", "-b", str(path), "alice", "second").returncode == 0
    assert "alice:$pbkdf2-sha512$" in path.read_text()
    assert check(path, "alice", "second") and not check(path, "alice", "first pw") and check(path, "bob", "b:pw")

    mismatch = passwd(str(path), "carol", stdin="one\ntwo\n")
    assert mismatch.returncode == 1 and "Passwords do not match" in mismatch.stderr
    assert "carol" not in load(str(path))

    assert passwd("-D", str(path), "alice").returncode == 0
    assert sorted(load(str(path))) == ["bob"]
    missing = passwd("-D", str(path), "alice")
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_create_overwrites_and_missing_file_needs_c(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    absent = passwd("-b", str(path), "alice", "x")
    assert absent.returncode == 1 and "-c" in absent.stderr and not path.exists()
    passwd("-c", "-b", str(path), "alice", "x")
    passwd("-c", "-b", str(path), "bob", "y")
    assert sorted(load(str(path))) == ["bob"]


@pytest.mark.parametrize("user", ["a:b", "", " padded"])
def test_bad_user_names(tmp_path: Path, user: str) -> None:
    done = passwd("-c", "-b", str(tmp_path / "p"), user, "x")
    assert done.returncode == 1 and done.stderr.startswith("Error: ")


def test_upgrade_plain_text_file_keeps_comments_and_hashes(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    existing = hashing.create(b"kept", hashing.PBKDF2_SHA512)
    path.write_text(f"# site users\nalice:plain one\n\nbob:{existing}\ncarol:x:y\n")
    done = passwd("-U", str(path))
    assert done.returncode == 0, done.stderr
    text = path.read_text()
    assert text.startswith("# site users\n") and f"bob:{existing}\n" in text
    assert check(path, "alice", "plain one") and check(path, "carol", "x:y") and check(path, "bob", "kept")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.skipif(not shutil.which("mosquitto_passwd"), reason="mosquitto_passwd not installed")
def test_adding_to_a_mosquitto_file_keeps_its_entries(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "legacy", "old-pw"], check=True, capture_output=True)
    legacy_line = path.read_text().splitlines()[0]
    assert passwd("-b", str(path), "newcomer", "new-pw").returncode == 0
    assert path.read_text().splitlines()[0] == legacy_line
    assert check(path, "legacy", "old-pw") and check(path, "newcomer", "new-pw")
