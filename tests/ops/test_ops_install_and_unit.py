"""deploy/install.sh in a throwaway prefix (twice: idempotent), and the unit it installs
checked by systemd itself (``systemd-analyze verify``)."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from brokerprocess import REPO_ROOT

UNIT = REPO_ROOT / "deploy" / "edgemq.service"
INSTALL = REPO_ROOT / "deploy" / "install.sh"


def _unit_sections(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read(path)
    return parser


def test_unit_declares_what_the_service_relies_on() -> None:
    service = _unit_sections(UNIT)["Service"]
    expected = {
        "Type": "notify",
        "Restart": "on-failure",
        "StateDirectory": "edgemq",
        "User": "edgemq",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "AmbientCapabilities": "",
        "CapabilityBoundingSet": "",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert service["WatchdogSec"].endswith("s")
    assert "--data-dir /var/lib/edgemq" in service["ExecStart"]
    assert service["RestartPreventExitStatus"] == "2"  # a configuration error: restarting cannot help
    # The capability for ports below 1024 is documented, not granted.
    assert "#   AmbientCapabilities=CAP_NET_BIND_SERVICE" in UNIT.read_text()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("prefix")
    first = subprocess.run([str(INSTALL), "--prefix", str(prefix)], capture_output=True, text=True, timeout=280)
    assert first.returncode == 0, first.stdout + first.stderr
    return prefix


def test_install_in_a_prefix_lays_out_venv_config_and_unit(installed: Path) -> None:
    broker = installed / "opt/edgemq/venv/bin/edgemq-broker"
    assert os.access(broker, os.X_OK)
    config = installed / "etc/edgemq/broker.toml"
    assert 'data_dir = "/var/lib/edgemq"' in config.read_text()
    unit = (installed / "etc/systemd/system/edgemq.service").read_text()
    assert f"ExecStart={broker} -c {config} --data-dir /var/lib/edgemq" in unit
    check = subprocess.run([str(broker), "--check-config", "-c", str(config), "--data-dir", str(installed / "data")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_install_again_keeps_the_operators_configuration(installed: Path) -> None:
    config = installed / "etc/edgemq/broker.toml"
    edited = config.read_text().replace('bind = "127.0.0.1"', 'bind = "0.0.0.0"', 1)
    config.write_text(edited)
    unit = installed / "etc/systemd/system/edgemq.service"
    unit_before = unit.read_text()
    again = subprocess.run([str(INSTALL), "--prefix", str(installed)], capture_output=True, text=True, timeout=280)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "keeping the existing" in again.stdout
    assert config.read_text() == edited
    assert unit.read_text() == unit_before
    # Nothing outside the prefix: no stray files next to the config or unit.
    assert sorted(p.name for p in (installed / "etc/edgemq").iterdir()) == ["broker.toml"]
    assert sorted(p.name for p in (installed / "etc/systemd/system").iterdir()) == ["edgemq.service"]


def test_systemd_accepts_the_installed_unit(installed: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (Debian package systemd; .ci/run installs it)")
    unit = installed / "etc/systemd/system/edgemq.service"
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys; it warns on stderr, so any output is a failure.
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )


def test_systemd_analyze_catches_a_typo(installed: Path, tmp_path: Path) -> None:
    """The check above can fail: a misspelt key makes systemd-analyze speak."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (Debian package systemd; .ci/run installs it)")
    text = (installed / "etc/systemd/system/edgemq.service").read_text()
    broken = tmp_path / "edgemq.service"
    broken.write_text(text.replace("Restart=on-failure", "Restart=on-failure\nRestrat=always"))
    result = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "Restrat" in result.stderr
