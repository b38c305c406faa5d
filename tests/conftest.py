"""Shared test fixtures: a config in a temporary data folder and the container built from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from cloudmail.app import Container
from cloudmail.config import Config, load_config


def toml_value(value: Any) -> str:
    """A Python value written as TOML (enough for test configs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """Write `tables` as a TOML file at `path`."""
    lines = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in keys.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_config(tmp_path: Path, **tables: dict[str, Any]) -> Config:
    """A config with its data folder in `tmp_path`, every listener off but admin on a free port,
    and no DNS checks (no DNSBL zones, no iprev) unless a test asks: tests never ask the Internet
    (the name server is a closed loopback port unless a test gives its own)."""
    base: dict[str, dict[str, Any]] = {
        "server": {"hostname": "mail.example.test", "data_dir": str(tmp_path / "data")},
        "listen": {"smtp": "", "submission": "", "submissions": "", "imap": "", "imaps": "",
                   "managesieve": "", "admin": "tcp:0:interface=127.0.0.1"},
        "smtp": {"dnsbl_zones": [], "iprev": False, "authenticate": False},
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": 0.5},
    }
    for table, keys in tables.items():
        base.setdefault(table, {}).update(keys)
    return load_config(write_config(tmp_path / "cloudmail.toml", base))


test_config.__test__ = False  # a helper, not a test


@pytest.fixture
def container(tmp_path: Path):
    """A container over a fresh data folder with the built-in directory, ready to use."""
    c = Container(test_config(tmp_path))
    c.prepare_data_dir()
    yield c
    pytest_twisted.blockon(c.database.close())
    c.pools.stopService()
