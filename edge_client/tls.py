"""TLS through the platform's ssl module (MicroPython 1.22+ and CPython share SSLContext).

Imported only when a client is given ssl=..., so plain-TCP devices do not pay for
it. ssl may be a ready SSLContext (the newer umqtt.simple API) or True with
ssl_params (the older one): cert_reqs, cafile, cadata, cert, key, server_hostname.
"""
import ssl as _ssl


def context(ctx, params):
    """The SSLContext to use: the one given, or one built from ssl_params."""
    if hasattr(ctx, "wrap_socket"):
        return ctx
    reqs = params.get("cert_reqs", _ssl.CERT_REQUIRED)
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    if hasattr(ctx, "check_hostname") and reqs != _ssl.CERT_REQUIRED:
        ctx.check_hostname = False  # CPython refuses CERT_NONE while it checks names
    ctx.verify_mode = reqs
    if "cafile" in params or "cadata" in params:
        ctx.load_verify_locations(cafile=params.get("cafile"), cadata=params.get("cadata"))
    elif reqs == _ssl.CERT_REQUIRED and hasattr(ctx, "load_default_certs"):
        ctx.load_default_certs()
    if "cert" in params:
        ctx.load_cert_chain(params["cert"], params.get("key"))
    return ctx


def wrap(sock, ctx, params, server):
    return context(ctx, params).wrap_socket(sock, server_hostname=params.get("server_hostname", server))
