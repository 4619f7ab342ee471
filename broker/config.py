"""Broker settings: defaults like mosquitto 2, overridden by a TOML file and the command line.

Every field here is a documented key of the TOML file (see ``config/`` and the
README). The loader lives in ``config_file.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.bridge.config import BridgeConfig

MAX_PACKET_SIZE_LIMIT = 268_435_455  # the largest remaining length MQTT can express (+5)
AUTO_MEMORY = -1  # [limits] max_memory = "auto": a quarter of the machine's RAM


TLS_VERSIONS = ("tlsv1.2", "tlsv1.3")  # the minimum a TLS listener accepts (mosquitto's names)
LISTENER_PROTOCOLS = ("mqtt", "websockets")


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One ``[[listener]]`` table: where to listen, which protocol, and its TLS settings.

    The names follow mosquitto's listener options, so a mosquitto.conf carries over.
    """

    port: int | None = None  # required unless ``path`` is given; 0 = let the OS pick
    bind: str = "127.0.0.1"  # unlike mosquitto's "listener PORT", loopback unless told otherwise
    protocol: str = "mqtt"  # "mqtt" | "websockets"
    path: str | None = None  # a Unix socket instead of bind/port
    mode: int = 0o660  # permissions of the Unix socket
    websocket_path: str = "/mqtt"  # the HTTP path WebSocket clients must ask for
    # Browser pages (Origin header) allowed on a websockets listener; None = any.
    allowed_origins: tuple[str, ...] | None = None
    # TLS: a listener with certfile and keyfile speaks TLS (MQTT over TLS, or wss).
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None  # CA certificates that sign client certificates
    capath: str | None = None  # a directory of them (c_rehash layout), instead of or with cafile
    crlfile: str | None = None  # revoked client certificates (PEM CRL from the CA), re-read on SIGHUP
    require_certificate: bool = False  # mutual TLS: clients without a certificate from the CA are refused
    use_identity_as_username: bool = False  # the client certificate's CN becomes the username
    tls_version: str = "tlsv1.2"  # the minimum version accepted
    ciphers: str | None = None  # OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's)
    handshake_timeout: int = 10  # seconds a client may take for the TLS handshake and the WebSocket upgrade
    allow_anonymous: bool | None = None  # None: the default (anonymous clients allowed on local listeners)

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    @property
    def unix(self) -> bool:
        return self.path is not None

    @property
    def plain_tcp(self) -> bool:
        """Plain MQTT over TCP: what ``[listener]`` and ``--bind``/``--port`` describe."""
        return self.protocol == "mqtt" and not self.tls and not self.unix


@dataclass(slots=True)
class Config:
    # [listener]: the one plain MQTT listener when there are no [[listener]] tables
    bind: str = "127.0.0.1"
    port: int = 1883  # 0 = let the OS pick (tests); the chosen port is logged
    # [[listener]] tables: any number of listeners (plain, TLS, WebSockets, Unix socket)
    listeners: list[ListenerConfig] = field(default_factory=list)

    # [storage]
    backend: str = "sqlite"  # "sqlite" | "memory"
    data_dir: str = "./data"  # the SQLite file is <data_dir>/broker.db
    # "full": every acknowledged message survives kill -9 and power loss (fsync per group commit);
    # "normal": survives kill -9, a power cut may lose the last commits; "off": no fsync at all.
    sync: str = "full"
    # Bytes kept free on the data directory's file system: below it, QoS 1/2 messages that
    # need storage are refused (v5: 0x97) while stored ones are still delivered; 0 = no reserve.
    min_free_space: int = 0
    # Seconds without writes after traffic before the database gives freed space back and the
    # WAL is emptied (once per burst: an idle broker writes nothing); 0 = never.
    compact_after_idle: int = 30

    # [limits]
    max_queued_messages: int = 1000  # per session, QoS 1/2 queued beyond the in-flight window; 0 = no limit
    # per session, payload bytes queued; 0 = no limit. Bounded by default so that one
    # publisher cannot fill a Pi's SD card through the queues of offline sessions.
    max_queued_bytes: int = 32 << 20
    max_inflight_messages: int = 20  # outbound unacknowledged QoS 1/2 per client; our v5 Receive Maximum
    # Largest packet accepted (v5 Maximum Packet Size). Not mosquitto's 256 MB: a packet is
    # held in memory about twice while it is relayed, so 2 MiB (EMQX: 1 MB) fits a Pi.
    max_packet_size: int = 2 << 20
    max_session_expiry_interval: int = 0  # seconds; caps what clients ask for; 0 = no cap
    max_keepalive: int = 65535  # seconds; v5 clients asking more get Server Keep Alive
    max_topic_alias: int = 10  # v5 Topic Alias Maximum we accept from clients
    queue_qos0_messages: bool = False  # queue QoS 0 for offline persistent sessions
    queue_full_policy: str = "drop_new"  # when a session's queue is full: "drop_new" | "drop_oldest"
    connect_timeout: int = 10  # seconds from accepting a connection to its complete CONNECT
    max_connections: int = 100000  # clients connected at once, in all; 0 = no limit
    max_connections_per_address: int = 0  # from one source address; 0 = no limit (NAT hides many devices)
    max_connect_rate: int = 0  # new connections a second from one source address (bursts as many); 0 = no limit
    max_takeovers_per_minute: int = 0  # a client id taken over more often is refused for the minute; 0 = never
    max_topic_levels: int = 200  # levels of a topic name or filter (mosquitto's limit); 0 = no limit
    max_topic_length: int = 65535  # bytes of a topic name or filter; the protocol allows 65535
    # A subscriber that acknowledges nothing for this long while its queue is full has stopped
    # reading: its publishers are no longer held back and its queue limits drop (seconds).
    stalled_subscriber_timeout: int = 10
    # Memory budget (RSS, bytes) beyond which publishers are not read until there is room;
    # AUTO_MEMORY = a quarter of the machine's RAM, 0 = no budget.
    max_memory: int = AUTO_MEMORY

    # [mqtt]
    allow_zero_length_clientid: bool = True
    retain_available: bool = True
    # v5 Response Information for clients that request it; %c is replaced by the client id.
    response_information: str = "$response/%c/"
    # When set, CONNECTs are refused: v5 with 0x9D Server moved (or 0x9C Use another server)
    # and this Server Reference, v3.1.1 with return code 3 (server unavailable).
    server_reference: str = ""
    server_reference_mode: str = "moved"  # "moved" (0x9D) | "use_another" (0x9C)

    sys_interval: int = 10  # seconds between $SYS/broker/... updates; 0 = no $SYS topics

    # [auth]
    password_file: str = ""  # mosquitto-style user:hash lines (python -m broker passwd); "" = none
    acl_file: str = ""  # mosquitto-style ACL; "" = every client may use every topic
    # None ("auto"): loopback listeners allow clients without a user name, others refuse them.
    allow_anonymous: bool | None = None
    clientid_prefix_username: bool = False  # an authenticated client's id must start with its user name

    # [log]
    verbose: bool = False
    log_packets: bool = False  # every packet in and out, as mosquitto -v (also on with verbose)
    # "<N>" syslog priority prefixes and no timestamps, for the journal: "auto" (when stderr
    # is systemd's journal stream, JOURNAL_STREAM), "on" or "off".
    priority_prefix: str = "auto"

    # [metrics] an HTTP listener for Prometheus (/metrics) and health checks (/healthz, /readyz)
    metrics_enabled: bool = False
    metrics_bind: str = "127.0.0.1"
    metrics_port: int = 9883  # 0 = let the OS pick (tests); the chosen port is logged


    # [[bridge]] tables (broker/bridge/config.py reads them; not a section of SCHEMA)
    bridges: list[BridgeConfig] = field(default_factory=list)


def listener_settings(config: Config) -> list[ListenerConfig]:
    """The listeners to open: the ``[[listener]]`` tables, or else the plain one of ``[listener]``."""
    return list(config.listeners) or [ListenerConfig(port=config.port, bind=config.bind)]


def with_plain_listener(
    listeners: list[ListenerConfig], bind: str | None, port: int | None, default: Config
) -> list[ListenerConfig]:
    """``--bind``/``--port`` given with ``[[listener]]`` tables: they set the first plain listener.

    Where no table describes plain MQTT over TCP, one is added in front, so the options
    mean the same with or without tables (and the first ``listening on`` line is theirs).
    """
    for index, listener in enumerate(listeners):
        if listener.plain_tcp:
            changed = replace(
                listener,
                bind=listener.bind if bind is None else bind,
                port=listener.port if port is None else port,
            )
            return [*listeners[:index], changed, *listeners[index + 1 :]]
    first = ListenerConfig(
        port=default.port if port is None else port, bind=default.bind if bind is None else bind
    )
    return [first, *listeners]
