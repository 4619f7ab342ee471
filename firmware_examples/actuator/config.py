# Edit these for your network and broker, then copy to the board (see README.md).
WIFI_SSID = "my-network"
WIFI_PASSWORD = "my-wifi-password"

BROKER = "192.168.1.10"
PORT = 1883
USER = None
PASSWORD = None
CLIENT_ID = None  # None: "actuator-" + the board's unique id. Keep it fixed: the
#                   broker keeps the session (and the commands sent meanwhile) under it.

RELAY_PIN = 15  # GPIO driving the relay
COMMAND_TOPIC = "actuators/{id}/cmd"  # {"relay": "on"|"off", "id": 17}
STATE_TOPIC = "actuators/{id}/state"  # retained: what the relay does now
ONLINE_TOPIC = "actuators/{id}/online"  # retained "1"; the broker sets "0" when we vanish
STATE_FILE = "actuator.bin"  # outbox and QoS 2 receive state on flash
