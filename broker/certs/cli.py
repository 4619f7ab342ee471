"""``python -m broker certs``: make a CA, the broker's certificate and device certificates.

    python -m broker certs init --dir certs --host pi.local --ip 192.168.1.10
    python -m broker certs client sensor-1 --dir certs
    python -m broker certs renew --dir certs server sensor-1
    python -m broker certs show certs/server.crt
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from broker.certs import store
from broker.certs.describe import describe, expires_in, expiry_text, subject_alt_names
from broker.certs.issue import (
    CA_DAYS,
    CLIENT_DAYS,
    KEY_TYPES,
    SERVER_DAYS,
    CertError,
    KeyType,
    check_host_name,
)

EXIT_ERROR = 1
DEFAULT_DIR = "certs"


def _days(text: str) -> int:
    try:
        days = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if days < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 day, got {days}")
    return days


def _add_key_type(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--key-type", choices=KEY_TYPES, default="ecdsa",
        help="ecdsa (P-256, the default: small and fast on microcontrollers) or rsa (2048 bits)",
    )
    group.add_argument(
        "--rsa", dest="key_type", action="store_const", const="rsa", help="same as --key-type rsa"
    )


def _add_dir(parser: argparse.ArgumentParser, *, ca_key: bool = True) -> None:
    parser.add_argument(
        "--dir", default=DEFAULT_DIR, metavar="DIR",
        help=f"the certificate directory (default ./{DEFAULT_DIR})",
    )
    if ca_key:
        parser.add_argument(
            "--ca-key", metavar="FILE",
            help="the CA private key, if it is not in DIR/ca-private/ca.key (kept off the gateway)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m broker certs",
        description="Certificates for TLS and mutual TLS: a private CA, the broker's "
        "certificate and device certificates (PEM, and DER for MicroPython).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser(
        "init", help="make a CA and the broker's certificate",
        description="Make a CA and a server certificate whose subjectAltNames are the given "
        "host names and IP addresses (devices often connect to a gateway by IP address).",
    )
    _add_dir(init)
    init.add_argument(
        "--host", action="append", default=[], metavar="NAME",
        help="a DNS name clients use to reach the broker (repeatable)",
    )
    init.add_argument(
        "--ip", action="append", default=[], metavar="ADDR",
        help="an IP address clients use to reach the broker (repeatable)",
    )
    _add_key_type(init)
    init.add_argument("--days", type=_days, default=SERVER_DAYS,
                      help=f"server certificate validity (default {SERVER_DAYS})")
    init.add_argument("--ca-days", type=_days, default=CA_DAYS,
                      help=f"CA validity (default {CA_DAYS})")
    init.add_argument("--ca-name", default="edgemq CA", help="the CA's common name")
    init.add_argument("--force", action="store_true",
                      help="replace an existing CA (certificates it issued stop being trusted)")

    client = commands.add_parser(
        "client", help="issue a device certificate and key",
        description="Issue a certificate and key for one device, signed by the CA: "
        "DIR/clients/NAME.crt and .key (PEM), NAME.der and NAME.key.der (DER, for MicroPython).",
    )
    client.add_argument("name", metavar="NAME", help="the device name: the certificate's CN")
    _add_dir(client)
    _add_key_type(client)
    client.add_argument("--days", type=_days, default=CLIENT_DAYS,
                        help=f"validity (default {CLIENT_DAYS})")
    client.add_argument("--force", action="store_true", help="replace an existing certificate and key")

    renew = commands.add_parser(
        "renew", help="re-issue certificates with new dates, signed by the same CA",
        description="Re-issue certificates with the same names and new dates. The CA does "
        "not change, so clients keep trusting the broker; send SIGHUP to the broker afterwards.",
    )
    renew.add_argument(
        "targets", nargs="*", default=["server"], metavar="TARGET",
        help="'server' (the default), 'ca', a device name or a .crt file",
    )
    _add_dir(renew)
    renew.add_argument("--days", type=_days, help="validity (default: as for a new certificate)")
    renew.add_argument("--new-key", action="store_true", help="also make a new private key")
    renew.add_argument(
        "--within", type=_days, metavar="DAYS",
        help="renew only certificates that expire within DAYS days (for a daily cron job)",
    )

    show = commands.add_parser("show", help="print a certificate's subject, names and expiry")
    show.add_argument("files", nargs="+", metavar="FILE", help="a PEM or DER certificate")
    return parser


def _default_names() -> tuple[list[str], list[str]]:
    hosts = ["localhost"]
    try:
        hosts.insert(0, check_host_name(socket.gethostname()))
    except (CertError, OSError):
        pass
    return hosts, ["127.0.0.1", "::1"]


def cmd_init(args: argparse.Namespace) -> int:
    hosts, ips = args.host, args.ip
    defaulted = not hosts and not ips
    if defaulted:
        hosts, ips = _default_names()
    key_type: KeyType = args.key_type
    where = store.init(
        args.dir, hosts, ips, key_type=key_type, ca_days=args.ca_days, server_days=args.days,
        ca_name=args.ca_name, ca_key=args.ca_key, force=args.force,
    )
    server = store.load_certificate(where.server_cert)
    if defaulted:
        print(f"no --host or --ip given: the certificate names {', '.join(hosts + ips)}")
    print(f"made a CA and a server certificate in {where.dir}/")
    print(f"  {where.ca_cert}  the CA certificate: cafile for the broker and for every client")
    print(f"  {where.ca_der}  the same in DER, for MicroPython")
    print(f"  {where.server_cert}  the broker's certfile")
    print(f"  {where.server_key}  the broker's keyfile (mode 0600)")
    print(f"  {where.ca_key}  the CA private key (mode 0600)")
    print(f"server names: {', '.join(subject_alt_names(server))}")
    print(f"server certificate expires {expiry_text(server)}")
    print(
        f"warning: {where.ca_key} signs certificates that the broker trusts. In production keep "
        "it off the gateway: move it to an offline machine and give it with --ca-key to "
        "'certs client' and 'certs renew'.",
        file=sys.stderr,
    )
    print(f"next: python -m broker certs client NAME --dir {where.dir}")
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    files = store.issue_client(
        args.dir, args.name, key_type=args.key_type, days=args.days, ca_key=args.ca_key,
        force=args.force,
    )
    cert = store.load_certificate(files.cert)
    print(f"issued a certificate for {files.name}, expires {expiry_text(cert)}")
    print(f"  {files.cert}  certificate (PEM)")
    print(f"  {files.key}  private key (PEM, mode 0600)")
    print(f"  {files.cert_der}  certificate (DER, for MicroPython)")
    print(f"  {files.key_der}  private key (DER, for MicroPython, mode 0600)")
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    for target in args.targets:
        if args.within is not None:
            cert_file = store.target_files(args.dir, target, args.ca_key).cert
            left = expires_in(store.load_certificate(cert_file))
            if left.days >= args.within:
                print(f"{cert_file}: expires in {left.days} days, not renewed")
                continue
        result = store.renew(args.dir, target, days=args.days, new_key=args.new_key, ca_key=args.ca_key)
        key_note = " with a new key" if result.new_key else ""
        print(f"{result.cert}: renewed{key_note}, valid until {result.new_expiry} (was {result.old_expiry})")
        if target == "ca":
            print("copy the new ca.crt (or ca.der) to every client before the old one expires")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    for index, file in enumerate(args.files):
        certs = store.load_certificates(file)
        for number, cert in enumerate(certs, 1):
            if index or number > 1:
                print()
            count = f" (certificate {number} of {len(certs)})" if len(certs) > 1 else ""
            print(f"{Path(file)}{count}")
            for line in describe(cert):
                print(f"  {line}")
    return 0


COMMANDS = {"init": cmd_init, "client": cmd_client, "renew": cmd_renew, "show": cmd_show}


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        return COMMANDS[args.command](args)
    except CertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
