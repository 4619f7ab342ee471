"""Broker settings: defaults like mosquitto 2, overridden by a TOML file and the command line.

Every field here is a documented key of the TOML file (see ``config/`` and the
README). The loader lives in ``config_file.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PACKET_SIZE_LIMIT = 268_435_455  # the largest remaining length MQTT can express (+5)


@dataclass(slots=True)
class Config:
    # [listener]
    bind: str = "127.0.0.1"
    port: int = 1883  # 0 = let the OS pick (tests); the chosen port is logged

    # [storage]
    backend: str = "sqlite"  # "sqlite" | "memory"
    data_dir: str = "./data"  # the SQLite file is <data_dir>/broker.db
    # "full": every acknowledged message survives kill -9 and power loss (fsync per group commit);
    # "normal": survives kill -9, a power cut may lose the last commits; "off": no fsync at all.
    sync: str = "full"

    # [limits]
    max_queued_messages: int = 1000  # per session, QoS 1/2 queued beyond the in-flight window; 0 = no limit
    max_queued_bytes: int = 0  # per session, payload bytes queued; 0 = no limit
    max_inflight_messages: int = 20  # outbound unacknowledged QoS 1/2 per client; our v5 Receive Maximum
    max_packet_size: int = MAX_PACKET_SIZE_LIMIT  # largest packet accepted (v5 Maximum Packet Size)
    max_session_expiry_interval: int = 0  # seconds; caps what clients ask for; 0 = no cap
    max_keepalive: int = 65535  # seconds; v5 clients asking more get Server Keep Alive
    max_topic_alias: int = 10  # v5 Topic Alias Maximum we accept from clients
    queue_qos0_messages: bool = False  # queue QoS 0 for offline persistent sessions
    queue_full_policy: str = "drop_new"  # when a session's queue is full: "drop_new" | "drop_oldest"

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
