"""``python -m broker --check-config``: exit 0 for a usable configuration, 2 with the problems."""

from __future__ import annotations

from pathlib import Path

from ops_helpers import run_broker_command
from brokerprocess import REPO_ROOT


def _check(tmp_path: Path, toml: str, *extra: str):
    path = tmp_path / "site.toml"
    path.write_text(toml)
    return run_broker_command("--check-config", "-c", str(path), *extra)


def test_the_example_configurations_pass(tmp_path: Path) -> None:
    for example in sorted((REPO_ROOT / "config").glob("*.toml")):
        result = run_broker_command("--check-config", "-c", str(example), "--data-dir", str(tmp_path / "d"))
        assert result.returncode == 0, (example, result.stderr)
        assert "configuration OK" in result.stdout


def test_a_bad_key_is_listed_with_file_and_line(tmp_path: Path) -> None:
    result = _check(tmp_path, "[limits]\nmax_inflight_msgs = 5\n")
    assert result.returncode == 2
    assert f"{tmp_path / 'site.toml'}:2: unknown key 'max_inflight_msgs' in [limits]" in result.stderr
    assert "did you mean 'max_inflight_messages'" in result.stderr


def test_unusable_data_dir_and_conflicting_ports_are_all_listed(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    toml = f"""
[listener]
port = 1884
[storage]
data_dir = "{blocker}"
[metrics]
metrics_enabled = true
metrics_port = 1884
"""
    result = _check(tmp_path, toml)
    assert result.returncode == 2
    assert "2 problems" in result.stderr
    assert f"data_dir {blocker} exists but is not a directory" in result.stderr
    assert "metrics_port 1884 is also the MQTT port" in result.stderr


def test_a_damaged_database_is_a_problem(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "broker.db").write_bytes(b"this is not an SQLite file" * 200)
    result = _check(tmp_path, f'[storage]\ndata_dir = "{data}"\n')
    assert result.returncode == 2
    assert "broker.db is not a usable database" in result.stderr
    assert (data / "broker.db").exists()  # a check never moves or changes anything


def test_a_running_brokers_database_is_not_a_problem(broker, tmp_path: Path) -> None:
    result = _check(tmp_path, f'[storage]\ndata_dir = "{broker.data_dir}"\n')
    assert result.returncode == 0, result.stderr
    assert "in use by a running broker" in result.stderr


def test_a_missing_data_dir_that_can_be_created_is_fine(tmp_path: Path) -> None:
    result = _check(tmp_path, f'[storage]\ndata_dir = "{tmp_path}/new/deeper"\n')
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "new").exists()


def test_a_low_port_warns_about_the_capability_when_it_is_missing(tmp_path: Path) -> None:
    result = _check(tmp_path, "[listener]\nport = 883\n", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 0
    with open("/proc/self/status") as status:
        has_capability = any(line.startswith("CapEff:") and int(line.split()[1], 16) >> 10 & 1 for line in status)
    assert ("CAP_NET_BIND_SERVICE" in result.stderr) is (not has_capability)
