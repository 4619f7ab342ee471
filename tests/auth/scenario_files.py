"""Write a contract ``Scenario`` as a password file and an ACL file (the file backend's factory)."""

from __future__ import annotations

from pathlib import Path

from broker.auth import hashing
from broker.auth.contract import Scenario


def write_scenario(scenario: Scenario, directory: Path, algorithm: str = hashing.ARGON2ID) -> tuple[Path, Path]:
    passwords = directory / "passwords"
    passwords.write_text(
        "".join(f"{user}:{hashing.create(pw.encode(), algorithm)}\n" for user, pw in scenario.users.items())
    )
    lines = ["# written by tests/auth/scenario_files.py"]
    lines += [f"topic {access} {topic_filter}" for access, topic_filter in scenario.anonymous]
    for user, rules in scenario.rules.items():
        lines.append("")
        lines.append(f"user {user}")
        lines += [f"topic {access} {topic_filter}" for access, topic_filter in rules]
    lines.append("")
    lines += [f"pattern {access} {topic_filter}" for access, topic_filter in scenario.patterns]
    acl = directory / "acl"
    acl.write_text("\n".join(lines) + "\n")
    return passwords, acl
