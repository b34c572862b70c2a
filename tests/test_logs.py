"""`server.log_format = "json"`: one JSON object a line, with the message id of a record
about one message as a field; serve's own lines come out that way."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from mailgate.logs import JsonFormatter
from tests.test_cli import MAILGATE


def test_a_record_about_a_message_names_it() -> None:
    record = logging.makeLogRecord(
        {"name": "mailgate.delivery", "levelname": "WARNING", "msg": "x %s", "args": ("y",)}
    )
    record.message_id = "01ABC"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "x y" and line["message_id"] == "01ABC"
    assert line["level"] == "warning" and line["logger"] == "mailgate.delivery"
    assert line["time"].endswith("+00:00")


def test_serve_logs_json_lines(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env.update(
        {
            "MAILGATE_SERVER_DATA_DIR": str(tmp_path),
            "MAILGATE_SMTP_PORT": "0",
            "MAILGATE_HTTP_PORT": "0",
            "MAILGATE_SERVER_INGRESS_PROCESSES": "1",
            "MAILGATE_SERVER_DELIVERY_PROCESS": "false",
            "MAILGATE_SERVER_LOG_FORMAT": "json",
        }
    )
    proc = subprocess.Popen(
        [*MAILGATE, "serve"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        deadline, lines = time.monotonic() + 30, []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if line.startswith("{"):
                lines.append(json.loads(line))
                if "listening" in lines[-1]["message"]:
                    break
        assert any("listening" in line["message"] for line in lines), lines
        assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
