"""The central broker as shipped, for link tests and benchmarks: a PKI made by
deploy/broker/make-pki.sh and a real mosquitto running deploy/broker/mosquitto.conf
(only the port, the loopback bind and the paths changed; `extra` lines appended;
everything logged, though not flushed at once: count and time on the wire instead)."""

from __future__ import annotations

import getpass
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from bench_agent.config import MqttConfig
from tests.support import REPO, Broker

BROKER_DIR = REPO / "deploy" / "broker"


def have_tls_broker() -> bool:
    return shutil.which("mosquitto") is not None and shutil.which("openssl") is not None


def make_pki(directory: Path, *clients: str) -> Path:
    """A CA, a broker certificate for `localhost` only (so that a link to 127.0.0.1
    fails the name check) and one client certificate per name; `directory`."""
    for args in (["ca"], ["broker", "localhost"], *(["client", c] for c in clients)):
        subprocess.run(
            [str(BROKER_DIR / "make-pki.sh"), str(directory), *args],
            check=True,
            capture_output=True,
            text=True,
        )
    return directory


def revoke(pki: Path, name: str) -> None:
    subprocess.run(
        [str(BROKER_DIR / "make-pki.sh"), str(pki), "revoke", name],
        check=True,
        capture_output=True,
        text=True,
    )


class TlsBroker(Broker):
    """`Broker` (start/stop keep the port) with the shipped TLS configuration."""

    def __init__(self, workdir: Path, pki: Path, extra: str = "") -> None:
        super().__init__(workdir)
        self.pki = pki
        persist = workdir / "persist"
        persist.mkdir(exist_ok=True)
        conf = (BROKER_DIR / "mosquitto.conf").read_text()
        for old, new in {
            "listener 8883\n": f"listener {self.port} 127.0.0.1\n",
            "/etc/mosquitto/smartbench/acl": str(BROKER_DIR / "acl"),
            "/etc/mosquitto/smartbench/": f"{pki}/",
            "/var/lib/mosquitto/": f"{persist}/",
        }.items():
            assert old in conf, f"mosquitto.conf no longer contains {old!r}"
            conf = conf.replace(old, new)
        # Started as root, mosquitto would become user "mosquitto", who cannot read the
        # test's private directory: stay the user running the tests.
        self.conf.write_text(f"{conf}\nuser {getpass.getuser()}\nlog_type all\n{extra}\n")

    def restart(self) -> None:
        """A new mosquitto process on the same port (new TLS ticket keys, the CRL read again)."""
        self.stop()
        self.start()

    def link_config(self, name: str, port: int, **changes: object) -> MqttConfig:
        """A bench's [mqtt] for certificate `name`, to `localhost`:`port` (the broker's or
        a proxy's), fast reconnects."""
        cfg = MqttConfig(
            host="localhost",
            port=port,
            topic_prefix="smartbench",
            keepalive_s=60,
            protocol="5",
            client_id=name,
            ca_file=self.pki / "ca.crt",
            cert_file=self.pki / f"{name}.crt",
            key_file=self.pki / f"{name}.key",
            tls=True,
            username=None,
            password=None,
            reconnect_min_s=0.1,
            reconnect_max_s=0.3,
        )
        return replace(cfg, **changes)  # type: ignore[arg-type]
