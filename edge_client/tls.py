"""TLS through the platform's ssl module (MicroPython 1.22+ and CPython share SSLContext).

Imported only when a client is given ssl=..., so plain-TCP devices do not pay for
it. ssl may be a ready SSLContext (the newer umqtt.simple API) or True with
ssl_params (the older one): cert_reqs, cafile, cadata, cert, key, server_hostname.
CA certificates may be PEM or DER: they are handed over as DER because the
mbedTLS of MicroPython ports parses no PEM (only the first certificate of a
bundle counts there). cert and key go to load_cert_chain as given.
"""
import ssl as _ssl
from binascii import a2b_base64


def der(data):
    """DER bytes of the certificates in data (PEM text or already DER)."""
    if isinstance(data, str):
        data = data.encode()
    if b"-----BEGIN" not in data:
        return data
    out = b""
    body = b""
    inside = False
    for line in data.split(b"\n"):
        line = line.strip()
        if line.startswith(b"-----BEGIN"):
            body = b""
            inside = True
        elif line.startswith(b"-----END"):
            if inside:
                out += a2b_base64(body)
            inside = False
        elif inside:
            body += line
    return out


def context(ctx, params):
    """The SSLContext to use: the one given, or one built from ssl_params."""
    if hasattr(ctx, "wrap_socket"):
        return ctx
    reqs = params.get("cert_reqs", _ssl.CERT_REQUIRED)
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    if hasattr(ctx, "check_hostname") and reqs != _ssl.CERT_REQUIRED:
        ctx.check_hostname = False  # CPython refuses CERT_NONE while it checks names
    ctx.verify_mode = reqs
    ca = params.get("cadata")
    if "cafile" in params:
        with open(params["cafile"], "rb") as f:
            ca = f.read()
    if ca:
        ctx.load_verify_locations(cadata=der(ca))
    elif reqs == _ssl.CERT_REQUIRED and hasattr(ctx, "load_default_certs"):
        ctx.load_default_certs()
    if "cert" in params:
        ctx.load_cert_chain(params["cert"], params.get("key"))
    return ctx


def wrap(sock, ctx, params, server):
    return context(ctx, params).wrap_socket(sock, server_hostname=params.get("server_hostname", server))
