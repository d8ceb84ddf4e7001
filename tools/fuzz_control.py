"""Coverage-guided fuzzing of the control socket's parser with atheris (optional tool).

    pip install atheris
    PYTHONPATH=. python tools/fuzz_control.py -runs=100000 [CORPUS_DIR ...]

Every input goes through ``lockfsm.protocol.wire.parse_request``: it must give a request or raise
InvalidArgument (any other exception is a crash that atheris reports with the input), an error
message must be short, and an accepted request must read the same once encoded again.  The
number of inputs tried is libFuzzer's closing line, "Done N runs".  tests/test_fuzz.py runs it
when LOCKFSM_ATHERIS=1.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import json.decoder
    import json.scanner

    from lockfsm.errors import InvalidArgument
    from lockfsm.protocol import wire

# The pure-Python JSON scanner, so that coverage sees the grammar (the C one is opaque to it).
json.scanner.make_scanner = json.scanner.py_make_scanner  # type: ignore[attr-defined]
json.decoder.scanstring = json.decoder.py_scanstring

# A seed per op, so that the fuzzer starts inside the grammar.
SEEDS = [
    b'{"op":"hello"}',
    b'{"op":"shutdown","gen":1,"grace":2.5}',
    b'{"op":"prepare","gen":1,"migration":"0123456789abcdef","hosturi":"qemu+tcp://b/system"}',
    b'{"op":"take_over","gen":2,"timeout":30}',
    b'{"op":"lease_lost","reason":"sanlock revoked the leases"}',
    b'{"op":"acquire","gen":1,"resource":{"type":"disk","path":"/a.img","canonical":"/a.img",'
    b'"flags":1,"leases":[{"key":"' + b"a" * 64 + b'","mode":"shared","version":3}]}}',
]


def one(data: bytes) -> None:
    try:
        op, fields = wire.parse_request(data)
    except InvalidArgument as e:
        if len(str(e)) >= wire.MAX_ERROR:
            raise AssertionError(f"error message of {len(str(e))} characters") from None
        return
    again = wire.encode({"op": op, **fields}, wire.MAX_MESSAGE)
    if wire.parse_request(again) != (op, fields):
        raise AssertionError(f"{data!r} does not round-trip")


def main() -> None:
    argv = list(sys.argv)
    if not [a for a in argv[1:] if not a.startswith("-")]:  # no corpus given: start from seeds
        corpus = tempfile.mkdtemp(prefix="lockfsm-fuzz-")
        for i, seed in enumerate(SEEDS):
            one(seed)
            with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                f.write(seed)
        argv.append(corpus)
    atheris.Setup(argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
