"""A do-nothing SMTP server on uvloop: it answers every command and keeps nothing, as
smtp-sink does. bench/floor.py measures it beside smtp-sink: what Python's event loop
alone costs a message, before any work of mailgate's.

    python bench/python_sink.py PORT [--processes N]   (N > 1: SO_REUSEPORT, one loop each)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import uvloop

END_OF_DATA = b"\r\n.\r\n"


class Sink(asyncio.Protocol):
    """Commands a line at a time, DATA up to its end; every reply gathered into one write
    per read, as a pipelining server would."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.in_data = False
        self.transport.write(b"220 python-sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        buf, out = self.buf + data, []
        while True:
            if self.in_data:  # buf starts with the CRLF before the body (see DATA)
                end = buf.find(END_OF_DATA)
                if end < 0:
                    buf = buf[-4:]  # enough to find an end split across reads
                    break
                buf, self.in_data = buf[end + 5 :], False
                out.append(b"250 2.0.0 Ok: kept nothing\r\n")
                continue
            nl = buf.find(b"\r\n")
            if nl < 0:
                break
            verb, buf = buf[:4].upper(), buf[nl + 2 :]
            if verb == b"DATA":
                self.in_data, buf = True, b"\r\n" + buf
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"".join([*out, b"221 2.0.0 Bye\r\n"]))
                self.transport.close()
                return
            elif verb == b"EHLO":
                out.append(b"250-python-sink\r\n250 PIPELINING\r\n")
            else:
                out.append(b"250 2.0.0 Ok\r\n")
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))


async def serve(port: int, reuse_port: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port, backlog=1024, reuse_port=reuse_port)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with server:
        await stop


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--processes", type=int, default=1)
    args = p.parse_args()
    children = []
    for _ in range(args.processes - 1):
        pid = os.fork()
        if pid == 0:
            uvloop.run(serve(args.port, True))
            os._exit(0)
        children.append(pid)
    try:
        uvloop.run(serve(args.port, args.processes > 1))
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
