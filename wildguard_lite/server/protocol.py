"""uvicorn's h11 protocol with a deadline on each request's head (request line and headers).

uvicorn closes idle keep-alive connections, but a connection whose head arrives slowly (or
never: a byte now and then resets its keep-alive timer) is held without limit, so a few slow
clients can hold every connection the process can open. Here a request's head must arrive
within `seconds` of the connection opening (or of the previous response): otherwise the
server answers 408 and closes the connection. The body has its own limit (`--body-timeout`,
in the app). Imported by `serve()` only (it needs uvicorn and h11).
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def head_timeout_answer(seconds: float) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": f"the request line and headers did not arrive within {seconds:g} s",
                "type": "request_timeout",
                "code": 408,
            }
        }
    ).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def head_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """An H11Protocol class (uvicorn.Config(http=...)) with the head deadline `seconds`."""
    answer = head_timeout_answer(seconds)

    class HeadTimeoutProtocol(H11Protocol):
        _head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is in: the app takes over
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request's head gets the same deadline

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expired(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            self.transport.write(answer)
            self.transport.close()

    return HeadTimeoutProtocol
