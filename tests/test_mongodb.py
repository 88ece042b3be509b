"""One way to open a MongoDB client: SRV for Atlas, host and port otherwise."""

from __future__ import annotations

from tenant_infra.mongodb import client_options

BASE = {"user": "ledger_acme", "password": "pw", "auth_source": "acme"}


def test_an_srv_host_always_uses_tls_and_no_port() -> None:
    options = client_options(host="c.abcde.mongodb.net", port=None, tls=False, **BASE)
    assert options["host"] == "mongodb+srv://c.abcde.mongodb.net/"
    assert options["tls"] is True and "port" not in options


def test_a_self_hosted_server_keeps_its_port_and_tls_choice() -> None:
    options = client_options(host="mongo.internal", port=27018, tls=False, **BASE)
    assert (options["host"], options["port"], options["tls"]) == ("mongo.internal", 27018, False)
    assert (options["username"], options["authSource"]) == ("ledger_acme", "acme")
