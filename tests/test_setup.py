"""The setup script's translation of pip's package sources into uv options (``.ci/pip_sources.py``)."""

import runpy
from pathlib import Path

SOURCES = runpy.run_path(str(Path(__file__).resolve().parents[1] / ".ci" / "pip_sources.py"))


def test_pip_sources_become_uv_options_once_each():
    listed = "\n".join(
        [
            ":env:.cert='/etc/ssl/certs/ca-certificates.crt'",
            ":env:.find-links='/opt/wheels'",
            "global.constraint='/etc/xdg/pip/constraints.txt'",
            "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'",
            "global.find-links='/opt/wheels'",
            "global.timeout='60'",
            "download.index-url='https://elsewhere/simple'",  # not install's section: left out
        ]
    )
    assert SOURCES["uv_options"](listed) == [
        "--find-links",
        "/opt/wheels",
        "--constraint",
        "/etc/xdg/pip/constraints.txt",
        "--extra-index-url",
        "file:///opt/pypi/simple",
        "--extra-index-url",
        "file:///opt/pypi-more/simple",
    ]
    assert SOURCES["uv_options"]("") == []
