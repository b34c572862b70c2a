"""A byte-exact SMTP client for tests: send exactly these bytes, read whole replies."""

from __future__ import annotations

import socket
import ssl


class Dialog:
    def __init__(
        self, port: int, host: str = "127.0.0.1", timeout: float = 10, source: str | None = None
    ) -> None:
        """`source`: the local address to connect from (any 127.x.y.z works on Linux)."""
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (host, port), timeout, source_address=(source, 0) if source else None
        )
        self.pending = b""

    def read_reply(self) -> tuple[int, str]:
        """One whole (possibly multi-line) reply: (code, text of the last line)."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.pending:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; got so far {lines!r} {self.pending!r}")
                self.pending += chunk
            line, _, self.pending = self.pending.partition(b"\r\n")
            lines.append(line.decode())
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def cmd(self, line: str) -> tuple[int, str]:
        self.send(line + "\r\n")
        return self.read_reply()

    def closed(self) -> bool:
        try:
            self.sock.settimeout(5)
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Dialog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def greeted(port: int, helo: str = "EHLO client.test", source: str | None = None) -> Dialog:
    d = Dialog(port, source=source)
    code, _ = d.read_reply()
    assert code == 220
    code, _ = d.cmd(helo)
    assert code == 250
    return d
