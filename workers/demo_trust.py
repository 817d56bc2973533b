"""The demo's trust setup: its own CURVE keys, credentials file and token key, made in
the data directory at start, so `router demo` runs the secure path (docs/SECURITY.md).

Principals, each with the rights its part of the simulation needs and no more:
``city-gateway`` binds the parties' addresses for their (simulated) apps; ``city-apps``
sends what those apps send; ``orders`` is the order service; ``dispatch`` the workers;
``web-gateway`` is the WebSocket gateway the web apps (a person) connect through.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from router.auth.keys import make_pair

PRINCIPALS = {
    "city-gateway": """roles = ["gateway"]
names = ["city-*"]
bind = ["merchant:*", "user:*", "rider:*"]""",
    "city-apps": """roles = ["sender"]
names = ["city-*"]
send = {{ORDER = ["svc:orders"], LOCATION = ["user:*"]}}
send_channels = {{CHAT = ["order:*"], LOCATION = ["dispatch:riders"]}}""",
    "orders": """roles = ["sender", "endpoint"]
names = ["city-*"]
bind = ["svc:orders"]
send = ["merchant:*", "user:*", "rider:*"]
send_channels = ["order:*"]
join = ["order:*"]
request = ["dispatch", "router.history", "router.presence"]
history = "all"
presence = "all\"""",
    "web-gateway": """roles = ["gateway"]
names = ["web-gateway*"]
bind = ["merchant:*", "user:*", "rider:*"]
send = {{ORDER = ["svc:orders"], LOCATION = ["user:*"]}}
send_channels = {{CHAT = ["order:*"], LOCATION = ["dispatch:riders"]}}""",
    "dispatch": """roles = ["worker", "sender"]
names = ["dispatch-*"]
bind = ["worker:dispatch-*"]
serve = ["dispatch"]
join = ["dispatch:riders"]""",
}


class DemoTrust:
    """Keys and credentials under ``data_dir/certs``; :meth:`options` gives a party's
    SDK options, :meth:`cli` its command-line flags."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "certs"
        for name in ("router", *PRINCIPALS):
            if not (self.dir / f"{name}.key_secret").exists():  # kept data dirs reuse them
                make_pair(self.dir, name)
        secret = self.dir / "tokens.secret"
        if not secret.exists():
            secret.write_text(secrets.token_urlsafe(48))
            secret.chmod(0o600)
        self.credentials = data_dir / "credentials.toml"
        self.credentials.write_text(self._file())

    def _file(self) -> str:
        parts = [f'[tokens]\nkeys = [{{id = "demo", secret_file = "{self.dir}/tokens.secret"}}]\n']
        for name, rules in PRINCIPALS.items():
            parts.append(f'[[principal]]\nname = "{name}"\npublic_keys = '
                         f'["{self.dir}/{name}.key"]\n{rules.format()}\n')
        return "\n".join(parts)

    def serve_flags(self) -> list[str]:
        """`router serve` flags."""
        return ["--credentials", str(self.credentials),
                "--curve-secret-key", str(self.dir / "router.key_secret")]

    def options(self, principal: str) -> dict[str, str]:
        """SDK options (server_key, key) for one principal."""
        return {"server_key": str(self.dir / "router.key"),
                "key": str(self.dir / f"{principal}.key_secret")}

    def cli(self, principal: str) -> list[str]:
        """--server-key/--key flags for one principal."""
        o = self.options(principal)
        return ["--server-key", o["server_key"], "--key", o["key"]]
