"""Development tools, not part of the running service: nothing under ``relay.devtools`` is imported
by ``relay serve`` or the store commands.

    fuzz.py    ``python -m relay.devtools.fuzz``: a seeded mutation fuzzer for every per-frame parser
"""
