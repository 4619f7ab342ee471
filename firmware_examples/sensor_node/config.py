# Edit these for your network and broker, then copy to the board (see README.md).
WIFI_SSID = "my-network"
WIFI_PASSWORD = "my-wifi-password"

BROKER = "192.168.1.10"  # host name or IP address of the MQTT broker
PORT = 1883
USER = None  # e.g. "sensor" when the broker wants a login
PASSWORD = None

# TLS: `python -m broker certs init --ip <broker address>` makes the CA and the
# broker's certificate, `python -m broker certs client <name>` a device's; copy the
# DER files (ca.der, <name>.der, <name>.key.der) to the board next to main.py.
SSL = False  # True: MQTT over TLS, the broker's certificate checked against CA; PORT = 8883 then
CA = "ca.der"  # the CA that signed the broker's certificate
CERT = None  # mutual TLS: this device's certificate, e.g. "sensor-1.der"
KEY = None  # and its private key, e.g. "sensor-1.key.der"
SERVER_HOSTNAME = None  # a name in the broker's certificate when BROKER is not one of them
CLIENT_ID = None  # None: "sensor-" + the board's unique id

TOPIC = "sensors/{id}/temperature"
INTERVAL_MS = 60000  # one reading per interval
DEEP_SLEEP = True  # sleep between readings (battery); False keeps the radio on
FLUSH_MS = 10000  # how long to try delivering before sleeping again
OUTBOX = "outbox.bin"  # readings wait here on flash until the broker has them
OUTBOX_SIZE = 2000  # readings kept on flash while offline (~50 bytes each; only a few
#                    are in RAM at a time); the oldest go first beyond that
