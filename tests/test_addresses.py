"""Address vetting by class: every spelling the resolver accepts, names through a resolver
stub, and the allow-list. Nothing here opens a connection."""

from __future__ import annotations

import pytest

from tasks.ingest.addresses import (
    AddressRefused,
    address_refusal,
    literal_refusal,
    normalise_host_port,
    parse_address,
    resolve_checked,
)
from tasks.ingest.url_list import refusal_reason

# Each forbidden class, each in several spellings the resolver accepts.
SPELLINGS = {
    "loopback_address": [
        "127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0x7F.0.0.1", "0177.0.0.1",
        "017700000001", "0x7f.1", "127.255.255.254", "[::1]", "[0:0:0:0:0:0:0:1]",
        "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::ffff:0:127.0.0.1]", "[2002:7f00:1::1]",
        "[64:ff9b::127.0.0.1]", "[::127.0.0.1]", "localhost", "LOCALHOST", "localhost.",
    ],
    "private_address": [
        "10.0.0.1", "10.1", "167772161", "0xa000001", "012.0.0.1", "172.16.0.1", "172.31.255.255",
        "192.168.1.1", "0xc0a80101", "3232235777", "[fc00::1]", "[fd12:3456::1]",
        "[::ffff:10.0.0.1]", "[::ffff:192.168.0.1]", "[2002:c0a8:101::]", "[64:ff9b::10.0.0.1]",
    ],
    "link_local_address": [
        "169.254.169.254", "2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.1",
        "[fe80::1]", "[fe80::1%25eth0]", "[::ffff:169.254.169.254]", "[64:ff9b::a9fe:a9fe]",
    ],
    "unspecified_address": ["0.0.0.0", "0", "0x0", "[::]", "[::ffff:0.0.0.0]"],
    "multicast_address": ["224.0.0.1", "239.255.255.250", "3758096385", "[ff02::1]", "[ff05::2]"],
    "shared_address": ["100.64.0.1", "100.127.255.254", "[::ffff:100.64.0.1]"],
    "reserved_address": ["240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "[2001:db8::1]"],
}  # fmt: skip
ALLOWED = ["8.8.8.8", "134744072", "0x8080808", "1.1", "[2606:4700::1111]", "[::ffff:8.8.8.8]"]
CASES = [(host, reason) for reason, hosts in SPELLINGS.items() for host in hosts]


@pytest.mark.parametrize("host, reason", CASES)
def test_every_spelling_of_a_forbidden_address_is_refused(host, reason):
    host = host.replace("%25", "%")
    got = literal_refusal(host)
    # the embedded-IPv4 forms report the embedded address's class
    assert got == reason, f"{host}: {got}"
    assert refusal_reason(f"http://{host}:8080/a.png", False, frozenset()) == reason


@pytest.mark.parametrize("host", ALLOWED)
def test_globally_routable_addresses_pass(host):
    assert literal_refusal(host) is None
    assert refusal_reason(f"https://{host}/a.png", False, frozenset()) is None


def test_numeric_forms_parse_as_the_resolver_reads_them():
    assert str(parse_address("2130706433")) == "127.0.0.1"
    assert str(parse_address("0x7f.1")) == "127.0.0.1"
    assert str(parse_address("[::ffff:127.0.0.1]")) == "::ffff:7f00:1"
    assert parse_address("example.org") is None and parse_address("1.2.3.4.5") is None


@pytest.mark.parametrize("host, reason", CASES[::3])
def test_names_are_checked_by_every_address_they_resolve_to(host, reason):
    address = str(parse_address(host.replace("%25", "%")) or "127.0.0.1")

    def resolver(name, port):
        return ["93.184.216.34", address]  # one good answer and one bad: refused

    with pytest.raises(AddressRefused) as refused:
        resolve_checked("images.example", 80, resolver=resolver)
    assert refused.value.reason == (
        reason if parse_address(host.replace("%25", "%")) else "loopback_address"
    )


def test_a_name_is_connected_to_by_the_address_that_was_checked():
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # a rebinding resolver
    resolver = lambda name, port: next(answers)  # noqa: E731
    assert resolve_checked("images.example", 80, resolver=resolver) == "93.184.216.34"


def test_unresolvable_names_are_refused():
    def resolver(name, port):
        raise OSError("Name or service not known")

    with pytest.raises(AddressRefused, match="does not resolve") as refused:
        resolve_checked("nowhere.invalid", 80, resolver=resolver)
    assert refused.value.reason == "unresolvable_host"


def test_the_allow_list_names_exact_host_and_port():
    allowed = {normalise_host_port("127.0.0.1", 8737)}
    assert resolve_checked("127.0.0.1", 8737, allowed) == "127.0.0.1"
    assert resolve_checked("0x7f000001", 8737, allowed) == "127.0.0.1"  # the same address
    for host, port in (("127.0.0.1", 8738), ("127.0.0.2", 8737), ("localhost", 8737)):
        with pytest.raises(AddressRefused):
            resolve_checked(host, port, allowed, resolver=lambda n, p: ["127.0.0.1"])
    assert resolve_checked("10.0.0.1", 80, allow_private=True) == "10.0.0.1"


def test_address_refusal_of_embedded_addresses():
    import ipaddress

    assert address_refusal(ipaddress.ip_address("2002:808:808::1")) is None  # 6to4 of 8.8.8.8
    assert address_refusal(ipaddress.ip_address("2002:a00:1::1")) == "private_address"
