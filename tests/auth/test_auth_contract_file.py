"""The file backend passes the backend contract (broker/auth/contract.py), as any backend must."""

from __future__ import annotations

import tempfile
from pathlib import Path

from broker.auth.base import AuthBackend
from broker.auth.contract import Scenario, contract_tests
from broker.auth.file_backend import FileBackend

from .scenario_files import write_scenario


def make_file_backend(scenario: Scenario) -> AuthBackend:
    directory = Path(tempfile.mkdtemp(prefix="auth-contract-"))
    passwords, acl = write_scenario(scenario, directory)
    return FileBackend(str(passwords), str(acl))


globals().update(contract_tests(make_file_backend))
