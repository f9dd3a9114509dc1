"""Log output: every record on one line, control characters escaped, as text or JSON; the
node's control process and its media workers (mediaserver/worker.py) log alike, a worker's
records tagged with its name.

A request path, a header or any other value a client sends can hold CR, LF or other control
characters (`GET /nothing%0A...` decodes to a newline). Escaped in the formatter, no logger of
any library can write a forged line: one record is always exactly one line.
"""

from __future__ import annotations

import json
import logging
import time

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_table() -> dict[int, str]:
    controls = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
    return {
        c: _NAMED.get(chr(c)) or (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in controls
    }


_ESCAPES = _escape_table()


def escape(text: str) -> str:
    """C0 and C1 controls, DEL and the Unicode line/paragraph separators as backslash escapes."""
    return text.translate(_ESCAPES)


class EscapingFormatter(logging.Formatter):
    """The usual text format, escaped as a whole: a traceback becomes one line too."""

    def __init__(self, fmt: str = TEXT_FORMAT, process: str | None = None) -> None:
        if process is not None:  # a media worker: `[w0]` before the logger's name
            fmt = fmt.replace("%(name)s", f"[{escape(process)}] %(name)s", 1)
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: `time` (UTC, ISO 8601), `level`, `logger`, `message` and, with an
    exception, `exc`; a media worker's records have `process` (its name); the values escaped
    like the text format's."""

    def __init__(self, process: str | None = None) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, str] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": escape(record.name),
            "message": escape(record.getMessage()),
        }
        if self.process is not None:
            line["process"] = escape(self.process)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = escape(record.exc_text)
        if record.stack_info:
            line["stack"] = escape(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text", process: str | None = None) -> None:
    """The root logger's only handler: stderr, escaped `text` or `json`; `process`: a media
    worker's name, on each of its records."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    formatter: logging.Formatter = (
        JsonFormatter(process) if log_format == "json" else EscapingFormatter(TEXT_FORMAT, process)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.captureWarnings(True)  # warnings too: through the same formatter
    if root.level > logging.DEBUG:
        logging.getLogger("aioice").setLevel(logging.WARNING)  # per-pair lines with addresses


def current_format() -> str:
    """How the root logger writes: `json` where configure_logging set JSON, else `text` (what
    a media worker is told, so that it logs as its control process does)."""
    handlers = logging.getLogger().handlers
    return "json" if any(isinstance(h.formatter, JsonFormatter) for h in handlers) else "text"
