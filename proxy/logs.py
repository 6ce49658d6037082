"""JSON log lines, one object per line; `extra` fields become keys. Shared by the
proxy and the service. Never log secrets."""

from __future__ import annotations

import json
import logging
import os


class JsonFormatter(logging.Formatter):
    SKIP = set(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in self.SKIP})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=os.environ.get("STACKSPACE_LOG_LEVEL", "INFO"), handlers=[handler])
