"""What saves bytes on the MQTT link, under `mqtt.py` (which seals paho: this module is
its part, no one else imports it): a TLS context that resumes the last session on a
reconnect, and a connection's MQTT 5 topic aliases with the content type of a payload
(README, "The link's own cost").
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class ResumingContext(ssl.SSLContext):
    """A client SSLContext whose `wrap_socket` (paho calls it for every new socket) offers
    the last session: a resumed handshake (TLS 1.2 ticket, TLS 1.3 PSK) sends no
    certificates. Name and certificate checks are the context's own, unchanged; a server
    that refuses the ticket (restarted, expired) makes it a full handshake."""

    offered: ssl.SSLSession | None = None  # what the next handshake offers

    def wrap_socket(  # noqa: PLR0917 (the signature is ssl.SSLContext's)
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session or self.offered,
        )


# A handshake cut short (the network, a broker restarting behind a load balancer) says
# nothing about the session; an alert or a failed check might be about it.
HANDSHAKE_CUT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def file_id(path: Path | None) -> tuple[str, int, int, int] | None:
    """Which file is there now: a replaced certificate or key makes a new TLS context."""
    if path is None:
        return None
    st = path.stat()
    return str(path), st.st_ino, st.st_mtime_ns, st.st_size


class TopicAliases:
    """The MQTT 5 topic aliases of one connection (the broker's CONNACK gives their
    number): a topic's first PUBLISH carries its name and a number, every later one only
    the number (3 bytes instead of the name). A new connection starts with none."""

    def __init__(self, maximum: int) -> None:
        self._maximum = maximum
        self._numbers: dict[str, int] = {}

    def wire(
        self, topic: str, content_type: str | None = None
    ) -> tuple[str, Properties | None, int | None]:
        """(topic to send, its properties, the number to `learn` once paho took it);
        `content_type`: the MQTT 5 content type of the payload, if it has one."""
        known = self._numbers.get(topic)
        number = known or len(self._numbers) + 1
        if number > self._maximum:  # all used: this topic goes by name
            return topic, publish_properties(content_type), None
        properties = publish_properties(content_type or "")
        assert properties is not None  # a str asks for properties
        properties.TopicAlias = number
        return ("", properties, None) if known else (topic, properties, number)

    def learn(self, topic: str, number: int) -> None:
        self._numbers[topic] = number


def publish_properties(content_type: str | None) -> Properties | None:
    """A PUBLISH's MQTT 5 properties: its content type ("" for none), or None."""
    if content_type is None:
        return None
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if content_type:
        properties.ContentType = content_type
    return properties
