"""A real browser: headless Chromium runs MQTT.js over ws:// and wss:// against the broker.

Debian's ``chromium`` and ``chromium-driver`` driven by selenium, MQTT.js from npm
(``npm ci`` in tests/browser, as .ci/run does), the page served from tests/browser by a
local HTTP server. For wss the test CA made by ``python -m broker certs`` is added to a
private NSS database (what Chromium on Linux trusts), so the browser checks the broker's
certificate for real: a browser without that CA is refused.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import certs
from e2e.pahoclient import PahoClient

from brokerprocess import BrokerFactory
from wsharness import InProcessBroker, websocket_addresses, websocket_config

PAGE_DIR = Path(__file__).resolve().parent.parent / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
MISSING = "; ".join(
    what for what, ok in (
        (f"{CHROMIUM} (apt-get install chromium)", os.path.exists(CHROMIUM)),
        (f"{CHROMEDRIVER} (apt-get install chromium-driver)", os.path.exists(CHROMEDRIVER)),
        ("certutil (apt-get install libnss3-tools)", shutil.which("certutil") is not None),
        ("tests/browser/node_modules/mqtt (npm ci --prefix tests/browser)",
         (PAGE_DIR / "node_modules" / "mqtt" / "dist" / "mqtt.min.js").exists()),
    ) if not ok
)


@pytest.fixture(scope="module", autouse=True)
def browser_tools_installed() -> None:
    # .ci/run installs all of these; a missing one is a failure, not a skip.
    assert not MISSING, f"the browser tests need: {MISSING}; .ci/run installs them"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    """tests/browser over HTTP on 127.0.0.1: the page, its script and node_modules."""
    handler = functools.partial(QuietHandler, directory=str(PAGE_DIR))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> certs.CertPaths:
    return certs.init(tmp_path_factory.mktemp("certs"), hosts=["localhost"], ips=["127.0.0.1"])


def nss_home(home: Path, ca_cert: Path | None) -> Path:
    """A HOME whose NSS database (~/.pki/nssdb, read by Chromium) trusts ``ca_cert``."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, timeout=30)
    if ca_cert is not None:
        subprocess.run(
            ["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "edgemq test CA", "-i", str(ca_cert)],
            check=True, timeout=30,
        )
    return home


def start_chromium(home: Path, profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    # Chromium inherits chromedriver's environment: its HOME holds the NSS database.
    service = Service(executable_path=CHROMEDRIVER, env={**os.environ, "HOME": str(home)})
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_script_timeout(30)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, cert_dir: certs.CertPaths) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("chromium")
    driver = start_chromium(nss_home(base / "home", cert_dir.ca_cert), base / "profile")
    yield driver
    driver.quit()


def call(driver: Any, method: str, *args: Any) -> Any:
    """Run ``window.edgemq[method](*args)`` in the page and return what its promise resolves to."""
    script = (
        "const done = arguments[arguments.length - 1];"
        "const args = Array.from(arguments).slice(1, -1);"
        "window.edgemq[arguments[0]](...args).then(done, (e) => done({error: String(e)}));"
    )
    return driver.execute_async_script(script, method, *args)


def load_page(driver: Any, page_url: str) -> None:
    driver.get(f"{page_url}/mqtt_page.html")
    assert driver.execute_script("return typeof mqtt === 'object' && typeof window.edgemq === 'object'"), \
        "MQTT.js did not load"


def run_scenario(driver: Any, page_url: str, url: str, tcp: Any, version: int) -> None:
    """Retained message, QoS 0/1/2 both ways, and a message queued while the browser was away."""
    prefix = f"browser/{uuid.uuid4().hex[:8]}"
    client_id = f"chromium-{uuid.uuid4().hex[:8]}"
    connect_options = {"clientId": client_id, "clean": False, "protocolVersion": version}
    if version == 5:
        connect_options["properties"] = {"sessionExpiryInterval": 300}

    python = PahoClient(tcp, f"py-{client_id}", version=version)  # plain MQTT on the same broker
    python.connect()
    python.subscribe(f"{prefix}/from-browser/#", qos=2)
    python.client.publish(f"{prefix}/retained", b"retained for the dashboard", qos=1, retain=True).wait_for_publish(5)

    load_page(driver, page_url)
    first = call(driver, "connect", url, connect_options)
    assert first == {"sessionPresent": False, "returnCode": 0}, first
    assert call(driver, "subscribe", f"{prefix}/#", 2) == {"granted": [2]}
    [retained] = call(driver, "waitForMessages", 1, 5000)
    assert retained == {"topic": f"{prefix}/retained", "payload": "retained for the dashboard",
                        "qos": 1, "retain": True}

    # The browser publishes at each QoS; the Python subscriber and the browser itself receive.
    for qos in (0, 1, 2):
        assert call(driver, "publish", f"{prefix}/from-browser/{qos}", f"browser qos {qos}", qos, False) == {"ok": True}
    got = python.expect_messages(3)
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [
        (f"{prefix}/from-browser/{qos}", f"browser qos {qos}".encode(), qos) for qos in (0, 1, 2)
    ]
    # Python publishes at each QoS to the browser.
    for qos in (0, 1, 2):
        python.client.publish(f"{prefix}/to-browser/{qos}", f"python qos {qos}".encode(), qos=qos).wait_for_publish(5)
    messages = call(driver, "waitForMessages", 7, 5000)
    received = sorted((m["topic"], m["payload"], m["qos"]) for m in messages[1:])
    assert received == sorted(
        [(f"{prefix}/from-browser/{qos}", f"browser qos {qos}", qos) for qos in (0, 1, 2)]
        + [(f"{prefix}/to-browser/{qos}", f"python qos {qos}", qos) for qos in (0, 1, 2)]
    ), messages

    # Offline: the persistent session keeps what is published meanwhile.
    assert call(driver, "end") == {"ok": True}
    python.client.publish(f"{prefix}/while-away", b"queued while offline", qos=1).wait_for_publish(5)
    load_page(driver, page_url)  # a new page: nothing but the broker's session remembers
    again = call(driver, "connect", url, connect_options)
    assert again == {"sessionPresent": True, "returnCode": 0}, again
    [queued] = call(driver, "waitForMessages", 1, 5000)
    assert (queued["topic"], queued["payload"], queued["qos"]) == (f"{prefix}/while-away", "queued while offline", 1)
    assert queued["retain"] is False
    assert call(driver, "end") == {"ok": True}
    python.client.disconnect()
    python.client.loop_stop()


@pytest.mark.parametrize("version", [4, 5])
def test_mqtt_js_over_ws_and_wss(
    browser: Any, page_url: str, broker_factory: BrokerFactory, cert_dir: certs.CertPaths, version: int
) -> None:
    """The broker process (SQLite sessions) with a plain, a ws and a wss listener."""
    broker = broker_factory(config=websocket_config(cert_dir))
    addresses = websocket_addresses(broker, tls=True)
    run_scenario(browser, page_url, f"ws://127.0.0.1:{addresses['ws'].port}/mqtt", broker, version)
    run_scenario(browser, page_url, f"wss://127.0.0.1:{addresses['wss'].port}/mqtt", broker, version)


@pytest.fixture(scope="module")
def wss_broker(cert_dir: certs.CertPaths) -> Iterator[InProcessBroker]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_dir.server_cert, cert_dir.server_key)
    server = InProcessBroker(ssl_context=context).start()
    yield server
    server.stop()


def test_origin_check_with_a_real_browser(browser: Any, page_url: str, broker_factory: BrokerFactory) -> None:
    # allowed_origins names the page's own origin: the browser's real Origin header passes.
    broker = broker_factory("--memory", config=websocket_config(extra=f'allowed_origins = ["{page_url}"]\n'))
    address = websocket_addresses(broker, tls=False)["ws"]
    run_scenario(browser, page_url, f"ws://127.0.0.1:{address.port}/mqtt", broker, 4)


def test_browser_on_a_page_of_another_origin_is_refused(
    browser: Any, page_url: str, broker_factory: BrokerFactory
) -> None:
    config = websocket_config(extra='allowed_origins = ["https://dashboard.example.com"]\n')
    broker = broker_factory("--memory", config=config)
    address = websocket_addresses(broker, tls=False)["ws"]
    load_page(browser, page_url)
    result = call(browser, "connect", f"ws://127.0.0.1:{address.port}/mqtt", {"clientId": "elsewhere"})
    assert "error" in result, result
    broker.wait_for_log(rf"websocket handshake from 127\.0\.0\.1:\d+ refused: 403 origin {page_url} is not allowed")
    call(browser, "end")


def test_browser_without_the_ca_refuses_wss(
    tmp_path: Path, page_url: str, wss_broker: InProcessBroker
) -> None:
    driver = start_chromium(nss_home(tmp_path / "home", None), tmp_path / "profile")
    try:
        load_page(driver, page_url)
        result = call(driver, "connect", f"wss://127.0.0.1:{wss_broker.ws.port}/mqtt", {"clientId": "untrusting"})
        assert "error" in result, result
        # The same page works with the CA trusted (test_mqtt_js_over_ws_and_wss):
        # the certificate check made the difference.
        assert wss_broker.connection_count() == 0
    finally:
        driver.quit()
