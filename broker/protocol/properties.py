"""MQTT 5 property identifiers (spec 2.2.2.2).

Properties travel as a plain ``dict[int, value]`` keyed by these identifiers:
compact, fast, and easy to forward unchanged. Two properties may repeat and are
kept as lists: USER_PROPERTY (list of ``(name, value)`` str tuples) and
SUBSCRIPTION_IDENTIFIER (list of int). Every other value is a single
int / str / bytes.
"""

PAYLOAD_FORMAT_INDICATOR = 0x01  # byte
MESSAGE_EXPIRY_INTERVAL = 0x02  # four-byte int
CONTENT_TYPE = 0x03  # utf-8 string
RESPONSE_TOPIC = 0x08  # utf-8 string
CORRELATION_DATA = 0x09  # binary
SUBSCRIPTION_IDENTIFIER = 0x0B  # variable byte int (list)
SESSION_EXPIRY_INTERVAL = 0x11  # four-byte int
ASSIGNED_CLIENT_IDENTIFIER = 0x12  # utf-8 string
SERVER_KEEP_ALIVE = 0x13  # two-byte int
AUTHENTICATION_METHOD = 0x15  # utf-8 string
AUTHENTICATION_DATA = 0x16  # binary
REQUEST_PROBLEM_INFORMATION = 0x17  # byte
WILL_DELAY_INTERVAL = 0x18  # four-byte int
REQUEST_RESPONSE_INFORMATION = 0x19  # byte
RESPONSE_INFORMATION = 0x1A  # utf-8 string
SERVER_REFERENCE = 0x1C  # utf-8 string
REASON_STRING = 0x1F  # utf-8 string
RECEIVE_MAXIMUM = 0x21  # two-byte int
TOPIC_ALIAS_MAXIMUM = 0x22  # two-byte int
TOPIC_ALIAS = 0x23  # two-byte int
MAXIMUM_QOS = 0x24  # byte
RETAIN_AVAILABLE = 0x25  # byte
USER_PROPERTY = 0x26  # utf-8 string pair (list)
MAXIMUM_PACKET_SIZE = 0x27  # four-byte int
WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28  # byte
SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29  # byte
SHARED_SUBSCRIPTION_AVAILABLE = 0x2A  # byte

Properties = dict  # dict[int, object]
