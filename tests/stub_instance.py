"""A stand-in Log API instance for the load balancer's process tests: an HTTP/1.1 server on its
own thread and loop, so that a synchronous test can talk to an `aygolog lb` process in front of
it."""

from __future__ import annotations

import asyncio
import threading


class Stub:
    """A stand-in Log API instance on its own thread: `/health` 200, anything else 200 `[]`
    after `delay` seconds; remembers the `X-Forwarded-Proto` of each proxied request."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.port = 0
        self.served = 0
        self.in_flight = 0
        self.forwarded_proto: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Stub:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._loop.run_until_complete(asyncio.sleep(0.05))  # let the handlers end
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                if "content-length" in headers:
                    await reader.readexactly(int(headers["content-length"]))
                if target != "/health":
                    self.in_flight += 1
                    self.forwarded_proto.append(headers.get("x-forwarded-proto", ""))
                    await asyncio.sleep(self.delay)
                    self.in_flight -= 1
                    self.served += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: 2\r\n\r\n[]"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
