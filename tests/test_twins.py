"""The hot path's twins mirror its compiled parts: one twin module per ``.pxi``, and
``relay._fastpath_py`` only gathers them under the compiled module's names.

Twin modules import what they use from the twin that defines it, at the top: none of them
imports the façade, and none imports another twin inside a function.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from relay import _fastpath_py, audio_format, fastpath

fast = pytest.importorskip("relay._fastpath", reason="compiled hot path not built")

RELAY = Path(__file__).resolve().parent.parent / "relay"
PARTS = ("messages", "framing", "codec", "playout", "wscore", "media")
TWINS = tuple(f"relay._{part}_py" for part in PARTS)


def test_every_compiled_part_has_a_twin_and_every_twin_a_part() -> None:
    assert sorted(p.name for p in RELAY.glob("_*.pxi")) == sorted(f"_{part}.pxi" for part in PARTS)
    assert sorted(p.stem for p in RELAY.glob("_*_py.py")) == sorted(
        [f"_{part}_py" for part in PARTS] + ["_fastpath_py"]
    )
    pyx = (RELAY / "_fastpath.pyx").read_text()
    assert [line for line in pyx.splitlines() if line.startswith("include ")] == [
        f'include "_{part}.pxi"' for part in PARTS
    ]


def test_the_facade_defines_nothing_and_gathers_every_twin() -> None:
    gathered = {}
    for name in TWINS:
        module = importlib.import_module(name)
        for attr in module.__all__:
            if attr in _fastpath_py.__all__:
                gathered[attr] = getattr(module, attr)
    for attr in audio_format.__all__:
        gathered[attr] = getattr(audio_format, attr)
    assert set(_fastpath_py.__all__) - set(gathered) == {"IMPLEMENTATION"}
    for attr, value in gathered.items():
        assert getattr(_fastpath_py, attr) is value, attr


def test_the_twins_expose_what_the_compiled_module_does() -> None:
    # The façade leaves the audio format out: Python code reads it from relay.audio_format.
    assert set(fastpath.__all__) == set(_fastpath_py.__all__) - set(audio_format.__all__)
    for name in _fastpath_py.__all__:
        assert hasattr(fast, name), name


@pytest.mark.parametrize("name", audio_format.__all__)
def test_the_compiled_audio_format_is_the_python_one(name: str) -> None:
    assert type(getattr(fast, name)) is int
    assert getattr(fast, name) == getattr(audio_format, name) == getattr(_fastpath_py, name)


def test_the_audio_format_adds_up() -> None:
    f = audio_format
    assert f.BYTES_PER_MS * 1000 == f.SAMPLE_RATE  # one byte per sample
    assert f.FRAME_BYTES == f.FRAME_MS * f.BYTES_PER_MS
    assert f.B64_FRAME_BYTES == 4 * -(-f.FRAME_BYTES // 3)


@pytest.mark.parametrize("name", TWINS)
def test_a_twin_imports_twins_directly_at_the_top(name: str) -> None:
    tree = ast.parse((RELAY / f"{name.removeprefix('relay.')}.py").read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            modules = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        assert "relay._fastpath_py" not in modules and "relay.fastpath" not in modules, (name, node.lineno)
        if id(node) not in top:
            assert not any(m.endswith("_py") and m.startswith("relay._") for m in modules), (name, node.lineno)
