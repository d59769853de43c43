"""A Server-Sent Events parser, fed one line at a time; shared by the sync and async tails.

It follows the WHATWG `EventSource` rules that matter to a client: `field: value` lines (one
leading space after the colon is dropped), `data` lines joined with newlines, comments (lines
starting with `:`) ignored, an empty line dispatching the event, and `id` remembered across
events (an id containing NUL is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEEvent", "SSEParser"]


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event."""

    event: str
    data: str
    id: str | None
    """The last event id in force when this event was dispatched."""


class SSEParser:
    """Turns lines (without their line terminator) into `SSEEvent`s."""

    def __init__(self, last_event_id: str | None = None) -> None:
        self.last_event_id = last_event_id
        """The id of the last event that carried one; what to send as `Last-Event-ID`."""
        self.comments = 0
        """How many comment lines were seen (the server's keep-alives and `connected`)."""
        self.retry: int | None = None
        """The reconnection delay (ms) the server asked for last, if any."""
        self._event = ""
        self._data: list[str] = []
        self._pending_id: str | None = None
        self._has_id = False

    def feed(self, line: str) -> SSEEvent | None:
        """Take one line; return an event when the line completes one."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._pending_id = value
                self._has_id = True
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        if self._has_id:
            # The id takes effect at dispatch time, even for an event without data.
            self.last_event_id = self._pending_id or None
            self._has_id = False
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SSEEvent(event=event or "message", data="\n".join(data), id=self.last_event_id)
