# Edit these for your network and broker, then copy to the board (see README.md).
WIFI_SSID = "my-network"
WIFI_PASSWORD = "my-wifi-password"

BROKER = "192.168.1.10"
PORT = 1883
USER = None
PASSWORD = None

# TLS: `python -m broker certs init --ip <broker address>` makes the CA and the
# broker's certificate, `python -m broker certs client <name>` a device's; copy the
# DER files (ca.der, <name>.der, <name>.key.der) to the board next to main.py.
SSL = False  # True: MQTT over TLS, the broker's certificate checked against CA; PORT = 8883 then
CA = "ca.der"  # the CA that signed the broker's certificate
CERT = None  # mutual TLS: this device's certificate, e.g. "actuator-1.der"
KEY = None  # and its private key, e.g. "actuator-1.key.der"
SERVER_HOSTNAME = None  # a name in the broker's certificate when BROKER is not one of them
CLIENT_ID = None  # None: "actuator-" + the board's unique id. Keep it fixed: the
#                   broker keeps the session (and the commands sent meanwhile) under it.

RELAY_PIN = 15  # GPIO driving the relay
COMMAND_TOPIC = "actuators/{id}/cmd"  # {"relay": "on"|"off", "id": 17}
STATE_TOPIC = "actuators/{id}/state"  # retained: what the relay does now
ONLINE_TOPIC = "actuators/{id}/online"  # retained "1"; the broker sets "0" when we vanish
STATE_FILE = "actuator.bin"  # outbox and QoS 2 receive state on flash
