"""Helpers for the end-to-end tests: the demo on a real server, Chromium, axe-core."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

import wsgi

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
DEMO_PASSWORD = "browser-pass"


def require_chromium() -> None:
    """Skip without Chromium, except under CI where a missing browser is a failure."""
    if Path(CHROMIUM).exists():
        return
    message = f"Chromium is not installed at {CHROMIUM} (Debian package 'chromium')."
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message + " The end-to-end tests did not run.")


class LiveServer:
    """The demo app served by a real (threaded) HTTP server on loopback."""

    def __init__(self, app):
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def seeded_database(folder: Path, config: dict) -> Path:
    """A demo database made by the demo's own init-db and seed-demo."""
    path = folder / "demo.db"
    app = wsgi.create_app(
        {**config, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}"},
        instance_path=str(folder / "instance"),
    )
    runner = app.test_cli_runner()
    assert runner.invoke(args=["init-db"]).exit_code == 0
    result = runner.invoke(args=["seed-demo", "--password", DEMO_PASSWORD])
    assert result.exit_code == 0, result.output
    with app.app_context():
        wsgi.dispose_engines()
    return path


def copy_database(template: Path, folder: Path) -> Path:
    path = folder / "demo.db"
    shutil.copy(template, path)
    return path
