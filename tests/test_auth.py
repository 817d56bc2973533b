"""The trust building blocks on their own: the credentials file's checks, rights and
patterns, app tokens, and the ZAP handler over real CURVE sockets (tcp loopback)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq

from router.auth import credentials, tokens
from router.auth.credentials import CredentialsError, TokenKey
from router.auth.grants import Action, compile_rules, matches
from router.auth.keys import load_public, make_pair
from router.auth.zap import ZapHandler
from router.protocol import MsgClass, Role

KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # a valid Z85 public key (RFC 26's example)


def load_text(tmp_path: Path, text: str) -> credentials.Credentials:
    f = tmp_path / "credentials.toml"
    f.write_text(text)
    return credentials.load(f)


def test_a_principal_and_its_rights(tmp_path):
    make_pair(tmp_path, "orders")
    c = load_text(tmp_path, f'''
[tokens]
keys = [{{id = "k2", secret = "{"x" * 32}"}}]
[[principal]]
name = "orders"
public_keys = ["orders.key", "{KEY}"]
roles = ["sender", "worker"]
bind = ["merchant:881"]
send = {{ORDER = ["merchant:*"], LOCATION = ["user:*"]}}
send_channels = ["order:*"]
serve = ["dispatch"]
rate = {{messages = 100, bytes = 1000}}
queue_quota = 7
''')
    [p] = c.principals
    assert p.names == ("orders",)  # default: its own name
    assert p.keys == (load_public(tmp_path / "orders.key"), KEY)
    assert p.may_hello(Role.SENDER, "orders") and not p.may_hello(Role.ENDPOINT, "orders")
    assert p.allows(Action.send(MsgClass.ORDER), "merchant:7")
    assert not p.allows(Action.send(MsgClass.CHAT), "merchant:7")
    assert p.allows(Action.send(MsgClass.LOCATION), "user:1")
    assert p.allows(Action.channel(MsgClass.CHAT), "order:5")
    assert p.allows(Action.SERVE, "dispatch") and not p.allows(Action.REQUEST, "dispatch")
    assert p.allows(Action.BIND, "merchant:881") and not p.allows(Action.BIND, "merchant:8810")
    assert (p.rate.messages, p.rate.bytes, p.queue_quota) == (100, 1000, 7)
    assert c.by_key() == {p.keys[0]: 0, KEY: 0}
    # the core's form: one entry per pattern, masks merged, the same answers
    rules = dict((pat, mask) for mask, pat in compile_rules(p))
    assert rules[b"merchant:*"] == int(Action.send(MsgClass.ORDER))
    assert c.token_keys == (TokenKey("k2", b"x" * 32),) and c.audience == "order-router"


def test_patterns():
    assert matches("rider:*", "rider:42") and matches("*", "anything")
    assert matches("user:7", "user:7") and not matches("user:7", "user:70")
    assert not matches("rider:*", "riders:1")


@pytest.mark.parametrize("body, needle", [
    ('name = "a"\npublic_keys = ["{k}"]\n', "roles: give at least one"),
    ('name = "a"\nroles = ["sender"]\n', "give public_keys"),
    ('name = "a"\npublic_keys = ["{k}"]\nroles = ["boss"]\n', "'boss' is not one of"),
    ('name = "a"\npublic_keys = ["{k}"]\nroles = ["sender"]\nsend = ["ri*der"]\n',
     "no other wildcards"),
    ('name = "a"\npublic_keys = ["{k}"]\nroles = ["sender"]\nsend = {{URGENT = ["x"]}}\n',
     "not a message class"),
    ('name = "a"\npublic_keys = ["short"]\nroles = ["sender"]\n', "cannot read key file"),
    ('name = "a"\npublic_keys = ["{k}"]\nroles = ["sender"]\nhistory = "mine"\n',
     "history is one of"),
    ('name = "a"\npublic_keys = ["{k}"]\nroles = ["sender"]\nrate = {{messages = -1}}\n',
     "rate.messages"),
    ('name = "a"\npublic_keys = ["{k}"]\nroles = ["sender"]\nsned = []\n',
     "unknown field(s) ['sned']"),
    ('name = "a"\npublic_keys = 5\nroles = ["sender"]\n',
     "public_keys: expected a list of strings"),
    ('name = "a"\npublic_keys = ["{k}"]\nroles = 5\n', "roles: expected a list of strings"),
    ('name = "a"\npublic_keys = ["{bad}"]\nroles = ["sender"]\n', "is not Z85 text"),
    ('name = "a"\npublic_keys = ["missing.key"]\nroles = ["sender"]\n',
     "cannot read key file"),
    ('name = "a*"\npublic_keys = ["{k}"]\nroles = ["sender"]\n', "no '*'"),
])
def test_each_mistake_names_the_principal_and_field(tmp_path, body, needle):
    with pytest.raises(CredentialsError) as err:
        load_text(tmp_path, "[[principal]]\n" + body.format(k=KEY, bad="~" * 40))
    assert needle in str(err.value) and "credentials.toml" in str(err.value)
    assert "(a)" in str(err.value) or "principal #1" in str(err.value)


def test_duplicates_and_file_errors(tmp_path):
    one = f'[[principal]]\nname = "a"\npublic_keys = ["{KEY}"]\nroles = ["sender"]\n'
    with pytest.raises(CredentialsError, match="used twice"):
        load_text(tmp_path, one + one)
    with pytest.raises(CredentialsError, match="already belongs to principal 'a'"):
        load_text(tmp_path, one + one.replace('"a"', '"b"'))
    with pytest.raises(CredentialsError, match="not valid TOML"):
        load_text(tmp_path, "[[principal]\n")
    with pytest.raises(CredentialsError, match="cannot read credentials file"):
        credentials.load(tmp_path / "missing.toml")
    with pytest.raises(CredentialsError, match="at least 32"):
        load_text(tmp_path, '[tokens]\nkeys = [{id = "k", secret = "short"}]\n')
    with pytest.raises(CredentialsError, match=r"key #1 \(k\): cannot read .*nope.secret"):
        load_text(tmp_path, '[tokens]\nkeys = [{id = "k", secret_file = "nope.secret"}]\n')
    with pytest.raises(CredentialsError, match="secret_file must be a non-empty string"):
        load_text(tmp_path, '[tokens]\nkeys = [{id = "k", secret_file = 5}]\n')
    with pytest.raises(CredentialsError, match=r"\[tokens\] keys is a list"):
        load_text(tmp_path, '[tokens]\nkeys = 5\n')
    with pytest.raises(CredentialsError, match=r"unknown section\(s\) \['token'\]"):
        load_text(tmp_path, '[token]\naudience = "x"\n')
    (tmp_path / "latin1.toml").write_bytes(b'# caf\xe9\n')
    with pytest.raises(CredentialsError, match="not UTF-8 text"):
        credentials.load(tmp_path / "latin1.toml")


def test_tokens_expire_rotate_and_refuse_forgeries():
    new, old = TokenKey("k2", b"n" * 32), TokenKey("k1", b"o" * 32)
    t = tokens.issue("user:7", 60, [new], "order-router", role="user")
    claims = tokens.verify(t, [new, old], "order-router")
    assert claims["sub"] == "user:7" and claims["role"] == "user"
    # rotation: a token signed by the old key verifies while both are listed
    assert tokens.verify(tokens.issue("rider:4", 60, [old], "order-router"),
                         [new, old], "order-router")["sub"] == "rider:4"
    cases = [
        (tokens.issue("user:7", 10, [new], "order-router", now=time.time() - 120),
         [new], "order-router", "expired"),
        (t, [TokenKey("k2", b"z" * 32)], "order-router", "bad_signature"),
        (t, [old], "order-router", "unknown_key"),
        (t, [new], "other-router", "wrong_audience"),
        ("not.a.token", [new], "order-router", "malformed"),
    ]
    for token, keys, aud, reason in cases:
        with pytest.raises(tokens.TokenError) as err:
            tokens.verify(token, keys, aud)
        assert err.value.reason == reason, (reason, str(err.value))
    with pytest.raises(tokens.TokenError) as err:
        tokens.issue("user 7", 60, [new], "order-router")
    assert err.value.reason == "bad_address"
    for ttl in (0, -5, float("inf"), float("nan"), "1h"):
        with pytest.raises(tokens.TokenError) as err:
            tokens.issue("user:7", ttl, [new], "order-router")
        assert err.value.reason == "malformed"


def _curve_pair(ctx: zmq.Context, server: tuple, client: tuple, port: int,
                server_key: bytes | None = None):
    """A CURVE ROUTER (keys ``server``) and a DEALER (keys ``client``) connected to it;
    the DEALER believes the server's public key is ``server_key`` (default: right)."""
    srv = ctx.socket(zmq.ROUTER)
    srv.setsockopt(zmq.LINGER, 0)
    srv.setsockopt(zmq.ZAP_DOMAIN, b"order-router")
    srv.setsockopt(zmq.CURVE_SERVER, 1)
    srv.setsockopt(zmq.CURVE_PUBLICKEY, server[0])
    srv.setsockopt(zmq.CURVE_SECRETKEY, server[1])
    srv.bind(f"tcp://127.0.0.1:{port}")
    cli = ctx.socket(zmq.DEALER)
    cli.setsockopt(zmq.LINGER, 0)
    cli.setsockopt(zmq.CURVE_SERVERKEY, server_key or server[0])
    cli.setsockopt(zmq.CURVE_PUBLICKEY, client[0])
    cli.setsockopt(zmq.CURVE_SECRETKEY, client[1])
    cli.connect(f"tcp://127.0.0.1:{port}")
    return srv, cli


def test_zap_handler_over_real_curve_sockets(tmp_path):
    from support import free_port
    server, known, unknown = zmq.curve_keypair(), zmq.curve_keypair(), zmq.curve_keypair()
    creds = load_text(tmp_path, f'[[principal]]\nname = "known"\npublic_keys = '
                                f'["{known[0].decode()}"]\nroles = ["sender"]\n')
    ctx = zmq.Context()
    zap = ZapHandler(ctx, creds).start()
    try:
        srv, cli = _curve_pair(ctx, server, known, free_port())
        cli.send(b"hello")
        assert srv.poll(3000)
        frames = srv.recv_multipart(copy=False)
        assert frames[1].bytes == b"hello" and frames[1].get("User-Id") == known[0].decode()
        srv2, stranger = _curve_pair(ctx, server, unknown, free_port())
        stranger.send(b"let me in")
        assert not srv2.poll(500)  # refused in the handshake: nothing reaches the socket
        assert zap.refused.get("unknown key", 0) >= 1
        # a reload that removes the known key: new connections with it are refused
        zap.reload(load_text(tmp_path, f'[[principal]]\nname = "x"\npublic_keys = '
                                       f'["{unknown[0].decode()}"]\nroles = ["sender"]\n'))
        srv3, late = _curve_pair(ctx, server, known, free_port())
        late.send(b"again")
        assert not srv3.poll(500)
        # a malformed ZAP request is answered, and the handler lives on
        probe = ctx.socket(zmq.REQ)
        probe.connect("inproc://zeromq.zap.01")
        probe.send_multipart([b"2.0", b"1"])
        assert probe.poll(2000) and probe.recv_multipart()[2] == b"500"
        for bad in ([b"1.0"], [b"1.0", b"2", b"d", b"a", b"i", b"CURVE", b"short"],
                    [b"1.0", b"3", b"d", b"a", b"i", b"\xff\xfe"]):
            probe.send_multipart(bad)
            assert probe.poll(2000) and probe.recv_multipart()[2] in (b"400", b"500")
        srv4, ok = _curve_pair(ctx, server, unknown, free_port())
        ok.send(b"fine")
        assert srv4.poll(3000)
        assert srv4.recv_multipart(copy=False)[1].get("User-Id") == unknown[0].decode()
        # a client holding the wrong server key fails its handshake before ZAP is asked
        accepted = zap.accepted
        srv5, lost = _curve_pair(ctx, server, known, free_port(),
                                 server_key=zmq.curve_keypair()[0])
        lost.send(b"who?")
        assert not srv5.poll(500) and zap.accepted == accepted
        assert zap.answered >= 5 and 0 < zap.mean_answer_s() <= zap.slowest_s < 1
        for s in (srv, cli, srv2, stranger, srv3, late, probe, srv4, ok, srv5, lost):
            s.close(linger=0)
    finally:
        zap.stop()
        ctx.term()


@pytest.mark.parametrize("allow_null", [False, True])
def test_zap_null_clients_only_in_open_mode(tmp_path, allow_null):
    from support import free_port
    creds = load_text(tmp_path, "")
    ctx = zmq.Context()
    zap = ZapHandler(ctx, creds, allow_null=allow_null).start()
    try:
        srv = ctx.socket(zmq.ROUTER)
        srv.setsockopt(zmq.ZAP_DOMAIN, b"order-router")  # NULL asks ZAP when a domain is set
        port = free_port()
        srv.bind(f"tcp://127.0.0.1:{port}")
        cli = ctx.socket(zmq.DEALER)
        cli.connect(f"tcp://127.0.0.1:{port}")
        cli.send(b"open?")
        if allow_null:
            assert srv.poll(3000)
            assert srv.recv_multipart(copy=False)[1].get("User-Id") == ""
            assert zap.accepted == 1
        else:
            assert not srv.poll(500) and zap.refused.get("mechanism NULL", 0) >= 1
        for s in (srv, cli):
            s.close(linger=0)
    finally:
        zap.stop()
        ctx.term()
