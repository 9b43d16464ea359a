"""A tiny RFC 6455 client over a raw socket: frames as bytes, the opening handshake, and
checks of what a server may send. For tests that must send what no WebSocket library would."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

TIMEOUT = 5.0  # seconds any single socket operation may take
MAX_MESSAGE = 65536  # REPORTS_MAX_MESSAGE_BYTES default, uvicorn's ws_max_size
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CONTROL = frozenset({CLOSE, PING, PONG})
KNOWN_OPCODES = frozenset({CONT, TEXT, BINARY, *CONTROL})

NORMAL, PROTOCOL_ERROR, INVALID_DATA, MESSAGE_TOO_BIG = 1000, 1002, 1007, 1009


# -- a tiny RFC 6455 framer ------------------------------------------------------------------


def apply_mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte masking ``key`` repeated (RFC 6455 5.3); its own inverse."""
    if not data:
        return b""
    stream = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


def encode_frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    """One frame as a client sends it: masked with a fresh random key, minimal length encoding."""
    head = bytes([(0x80 if fin else 0) | (rsv & 0b111) << 4 | (opcode & 0x0F)])
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if length <= 125:
        head += bytes([mask_bit | length])
    elif length <= 0xFFFF:
        head += struct.pack("!BH", mask_bit | 126, length)
    else:
        head += struct.pack("!BQ", mask_bit | 127, length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes = b""
    fin: bool = True

    def close(self) -> tuple[int | None, str]:
        """(code, reason) of a close frame; (None, "") when it has no payload (5.5.1)."""
        assert self.opcode == CLOSE, f"expected a close frame, got {self}"
        if not self.payload:
            return None, ""
        assert len(self.payload) >= 2, f"a close payload cannot be 1 byte: {self.payload!r}"
        (code,) = struct.unpack("!H", self.payload[:2])
        return code, self.payload[2:].decode("utf-8")  # 5.5.1: the reason is UTF-8

    def __repr__(self) -> str:
        shown = self.payload if len(self.payload) <= 40 else self.payload[:40] + b"..."
        return f"Frame(opcode={self.opcode:#x}, fin={self.fin}, {len(self.payload)} B: {shown!r})"


class RawWebSocket:
    """The client end of an open connection: send raw frames, read and check server frames."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self.buffer = bytearray(buffered)

    # sending

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        fin: bool = True,
        rsv: int = 0,
        masked: bool = True,
    ) -> None:
        self.send_raw(encode_frame(opcode, payload, fin=fin, rsv=rsv, masked=masked))

    def send_fragments(self, opcode: int, fragments: Sequence[bytes]) -> None:
        """One message as a start frame and continuation frames, in a single write."""
        last = len(fragments) - 1
        self.send_raw(
            b"".join(
                encode_frame(opcode if i == 0 else CONT, part, fin=i == last)
                for i, part in enumerate(fragments)
            )
        )

    def send_close(self, code: int, reason: bytes = b"") -> None:
        self.send(CLOSE, close_payload(code, reason))

    # receiving

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(max(65536, count - len(self.buffer)))
            if not chunk:
                raise EOFError(f"connection closed with {len(self.buffer)}/{count} bytes read")
            self.buffer += chunk
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def recv_frame(self) -> Frame:
        """The next frame from the server, checked against what a server may send."""
        head1, head2 = self._read(2)
        fin, rsv, opcode = bool(head1 & 0x80), (head1 >> 4) & 0b111, head1 & 0x0F
        assert rsv == 0, f"server set reserved bits {rsv:#05b} with no extension negotiated"
        assert opcode in KNOWN_OPCODES, f"server sent reserved opcode {opcode:#x}"
        assert not head2 & 0x80, "a server must not mask its frames (5.1)"
        length = head2 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
            assert length > 125, f"16-bit length {length} is not minimal (5.2)"
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
            assert 0xFFFF < length < 1 << 63, f"64-bit length {length} is not minimal/valid (5.2)"
        if opcode in CONTROL:
            assert fin and length <= 125, "server sent a fragmented or oversized control frame"
        return Frame(opcode, self._read(length), fin)

    def expect_close(self) -> tuple[int | None, str]:
        return self.recv_frame().close()

    def expect_server_closes_tcp(self, *, reset_ok: bool = False) -> None:
        """After its close frame, the server closes TCP (7.1.1) and sends nothing more (5.5.1).

        ``reset_ok``: when the client was still sending as the server failed the connection,
        the server closes with unread bytes in its buffer, which the kernel turns into a RST.
        """
        try:
            rest = self.sock.recv(65536)
        except ConnectionResetError:
            assert reset_ok, "server reset the connection instead of closing it"
            rest = b""
        assert not self.buffer and rest == b"", f"bytes after the close frame: {rest!r}"

    def expect_failure(self, code: int, *, reset_ok: bool = False) -> None:
        """The server _Fails the WebSocket Connection_ (7.1.7): close frame with ``code``, EOF."""
        received, _reason = self.expect_close()
        assert received == code
        self.expect_server_closes_tcp(reset_ok=reset_ok)


# -- the opening handshake -------------------------------------------------------------------


def accept_for(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (4.2.2)."""
    return base64.b64encode(
        hashlib.sha1(key.encode() + GUID, usedforsecurity=False).digest()
    ).decode()


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    rest: bytes  # bytes after the head: a body, or the first frames


def request_bytes(port: int, path: str, headers: dict[str, str | None]) -> bytes:
    """An opening handshake; ``headers`` override the defaults, a None value drops one."""
    fields: dict[str, str | None] = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": new_key(),
        "Sec-WebSocket-Version": "13",
        **headers,
    }
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items() if v is not None)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def read_response_head(sock: socket.socket) -> HttpResponse:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before a full response head: {data!r}"
        data += chunk
        assert len(data) < 16384, "response head too long"
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpResponse(int(status), headers, rest)


@contextmanager
def raw_connection(port: int) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        yield sock


def handshake(
    sock: socket.socket, port: int, headers: dict[str, str | None] | None = None
) -> HttpResponse:
    """Send an opening handshake for /echo and read the response head."""
    sock.sendall(request_bytes(port, "/echo", headers or {}))
    return read_response_head(sock)


@contextmanager
def open_ws(port: int, headers: dict[str, str | None] | None = None) -> Iterator[RawWebSocket]:
    """A connection to /echo past a checked opening handshake."""
    with raw_connection(port) as sock:
        response = handshake(sock, port, headers)
        assert response.status == 101, response
        yield RawWebSocket(sock, response.rest)
