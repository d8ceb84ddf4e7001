"""Fuzzing the control socket's wire format: lockfsm.protocol.wire's parser in process (hypothesis,
structured and raw bytes), then a live supervisor's socket.

The parser's contract: any bytes give a well-formed request or InvalidArgument, nothing else,
and a request it accepts reads the same once encoded again (within the request bound).  The live
supervisor's: no input kills it, each line gets an answer, and nothing it refuses changes its
state, its record or the kernel's locks.  The number of inputs each test tried is printed at the
end of the module.  tools/fuzz_control.py is the same parser under atheris (coverage-guided):
LOCKFSM_ATHERIS=1 runs it here.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lockfsm import InvalidArgument
from lockfsm.embed.standin import Guest, Host, make_disks, short_tmpdir
from lockfsm.protocol import rundir, wire
from lockfsm.protocol.kernel import alive, fd_locks
from tests.support.helpers import lockspace_locks

#: The loaded profile's example count ("ci" 25, "nightly" 2000), scaled: the parser is cheap.
BASE = settings.default.max_examples
PARSER = settings(max_examples=BASE * 20, suppress_health_check=list(HealthCheck))
STRUCTURED = settings(max_examples=BASE * 8, suppress_health_check=list(HealthCheck))
LIVE = settings(max_examples=BASE * 2, suppress_health_check=list(HealthCheck))
TRIED: Counter[str] = Counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- strategies -------------------------------------------------------------------------------

_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    ["", "x" * 5000, "\x00", "a\nb", "\ud800", "é" * 3000, "😀" * 1100]
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _text
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_key = st.sampled_from(["a" * 64, "b" * 64, ".", "..", "../x", "", "k:1", "x" * 129]) | _text
_lease = st.fixed_dictionaries(
    {"key": _key, "mode": st.sampled_from(["exclusive", "shared", "EXCLUSIVE", ""]) | _json},
    optional={"version": st.integers(min_value=-2, max_value=2**64) | _json, "extra": _json},
)
_path = st.sampled_from(["/images/a.img", "/", "relative", "", "/a\x00b", "/" + "p" * 5000]) | _text
_resource = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["disk", "lease", "DISK", ""]) | _json,
        "path": _path,
        "canonical": _path,
        "flags": st.integers(min_value=-4, max_value=8) | _json,
        "leases": st.lists(_lease, max_size=9) | _json,
    },
    optional={"extra": _json},
)
_field_values: dict[str, st.SearchStrategy[Any]] = {
    "gen": st.integers(min_value=-3, max_value=2**70) | _json,
    "resource": _resource | _json,
    "grace": st.floats() | st.integers(min_value=-(10**400), max_value=10**400) | _json,
    "timeout": st.floats() | st.integers(min_value=-5, max_value=10**6) | _json,
    "migration": st.sampled_from(["0123456789abcdef", "0123456789ABCDEF", "xyz"]) | _json,
    "hosturi": st.sampled_from(["qemu+tcp://b/system", "a\tb", "u" * 1025]) | _text,
    "reason": _text,
}


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request near the grammar: a known op (mostly) with its fields, some wrong, missing or
    extra."""
    op = draw(st.sampled_from(sorted(wire.REQUESTS)) | _json)
    fields = dict(wire.REQUESTS.get(op, {})) if isinstance(op, str) else {}
    msg: dict[str, Any] = {} if draw(st.integers(0, 9)) == 0 else {"op": op}
    for name in fields:
        if draw(st.integers(0, 9)):
            msg[name] = draw(_field_values[name])
    if draw(st.integers(0, 5)) == 0:
        msg[draw(st.sampled_from([*_field_values, "op", "ok"]) | _text)] = draw(_json)
    return msg


@st.composite
def request_lines(draw: st.DrawFn) -> bytes:
    """A request as bytes: JSON-encoded several ways, sometimes cut, spliced or padded."""
    msg = draw(requests())
    try:
        text = json.dumps(msg, ensure_ascii=draw(st.booleans()))
    except (ValueError, RecursionError):
        text = repr(msg)
    data = text.encode("utf-8", "surrogatepass")
    how = draw(st.integers(0, 7))
    if how == 0:  # truncated
        data = data[: draw(st.integers(0, len(data)))]
    elif how == 1:  # a few bytes replaced
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, max(0, len(data) - 1)))
            data = data[:at] + draw(st.binary(min_size=1, max_size=3)) + data[at + 1 :]
    elif how == 2:  # padded to the size bound, either side of it
        data = b" " * (wire.MAX_MESSAGE - len(data) - 1 + draw(st.integers(-2, 2))) + data
    elif how == 3:  # a field named twice
        data = data.replace(b"{", b'{"op": "hello", ', 1)
    return data


def _round_trips(op: str, fields: dict[str, Any]) -> None:
    again = wire.encode({"op": op, **fields}, wire.MAX_MESSAGE)
    assert wire.parse_request(again) == (op, fields)


def _parse(data: bytes) -> tuple[str, dict[str, Any]] | None:
    try:
        op, fields = wire.parse_request(data)
    except InvalidArgument as e:
        assert str(e) and len(str(e)) < wire.MAX_ERROR, str(e)[:200]
        return None
    assert op in wire.REQUESTS
    return op, fields


# -- the parser, in process ---------------------------------------------------------------------


@PARSER
@given(st.binary(max_size=300))
def test_raw_bytes_never_raise_anything_else(data: bytes) -> None:
    """Any bytes: a request or InvalidArgument; what is accepted round-trips."""
    TRIED["parse_request raw"] += 1
    parsed = _parse(data)
    if parsed:
        _round_trips(*parsed)


@STRUCTURED
@given(request_lines())
def test_structured_requests(data: bytes) -> None:
    """Near-valid requests (every op, right and wrong fields, cut, spliced, at the size bound)."""
    TRIED["parse_request structured"] += 1
    parsed = _parse(data)
    if parsed:
        _round_trips(*parsed)
        op, fields = parsed
        assert set(fields) == set(wire.REQUESTS[op])


@STRUCTURED
@given(_resource | _json)
def test_check_resource(res: Any) -> None:
    """A resource as it crosses the socket: accepted unchanged or InvalidArgument; an accepted one
    survives JSON and is accepted again."""
    TRIED["check_resource"] += 1
    try:
        out = wire.check_resource(res)
    except InvalidArgument as e:
        assert len(str(e)) < wire.MAX_ERROR
        return
    assert out is res
    again = wire.decode(wire.encode(res, wire.MAX_MESSAGE))
    assert wire.check_resource(again) == res


@PARSER
@given(_json.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200))
def test_decode(data: bytes) -> None:
    """decode: a dict or InvalidArgument; a dict is encoded again (within the reply bound) and
    reads the same."""
    TRIED["decode"] += 1
    try:
        obj = wire.decode(data)
    except InvalidArgument:
        return
    assert isinstance(obj, dict)
    line = wire.encode(obj)
    assert wire.encode(wire.decode(line, wire.MAX_REPLY)) == line


def test_error_replies_are_always_small() -> None:
    """An error naming a value as long as a whole message still makes a reply that can be sent
    (it once raised in the supervisor, killing it and its guest)."""
    TRIED["error_reply"] += 1
    for line in (
        b'{"op": "' + "\u0080".encode() * 30000 + b'"}',
        wire.encode({"op": "hello", "x" * 40000: 1}, wire.MAX_MESSAGE),
        wire.encode({"op": "release", "gen": 1, "resource": {"p": "\x01" * 10000}}),
    ):
        with pytest.raises(InvalidArgument) as err:
            wire.parse_request(line)
        assert len(wire.encode(wire.error_reply(err.value), wire.MAX_MESSAGE)) < 8192


# -- atheris (optional) -----------------------------------------------------------------------


@pytest.mark.skipif(os.environ.get("LOCKFSM_ATHERIS") != "1", reason="LOCKFSM_ATHERIS=1 runs it")
def test_atheris_fuzz_of_the_parser() -> None:
    """tools/fuzz_control.py under atheris for LOCKFSM_ATHERIS_RUNS inputs (default 50000)."""
    pytest.importorskip("atheris")
    runs = int(os.environ.get("LOCKFSM_ATHERIS_RUNS", "50000"))
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "fuzz_control.py"), f"-runs={runs}"],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHONPATH": ROOT},
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    done = re.search(r"Done (\d+) runs", out.stderr)
    assert done, out.stderr[-3000:]
    TRIED["atheris"] += int(done.group(1))


# -- a live supervisor ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live() -> Iterator[Guest]:
    workdir = short_tmpdir("lff")
    host = Host(lockspace=short_tmpdir("lfl"))
    try:
        (disk,) = make_disks(workdir, "fuzzed.img")
        yield host.start("fuzzed", [disk])
    finally:
        host.cleanup()
        subprocess.run(["rm", "-rf", workdir, host.lockspace], check=False)


def _sock(g: Guest) -> str:
    launch = rundir.pointed(g.host.run_dir, g.uuid)
    assert launch is not None
    return rundir.socket_path(g.host.run_dir, launch)


def _state(g: Guest) -> dict[str, Any]:
    """Everything a refused request must leave as it was."""
    info = wire.call(_sock(g), {"op": "hello"}, 10.0)
    info.pop("since")
    record = rundir.record_path(g.host.run_dir, str(rundir.pointed(g.host.run_dir, g.uuid)))
    st_ = os.stat(record)
    with open(record, "rb") as f:
        content = f.read()
    return {
        "info": info,
        "record": (st_.st_ino, st_.st_mtime_ns, content),
        "run_dir": sorted(os.listdir(g.host.run_dir)),
        "kernel": lockspace_locks(g.host.lockspace),
        "supervisor locks": fd_locks(g.supervisor_pid),
        "guest": alive(g.pid or 0),
    }


def _changes_something(data: bytes, gen: int) -> bool:
    """Whether a line of ``data`` is a request that is meant to change the supervisor (from its
    controller, or attach / lease_lost): the fuzz is about the refused ones."""
    for line in data.split(b"\n"):
        try:
            op, fields = wire.parse_request(line)
        except InvalidArgument:
            continue
        if op in ("attach", "lease_lost") or fields.get("gen") == gen:
            return True
    return False


def _exchange(path: str, data: bytes) -> list[bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10.0)
        s.connect(path)
        try:
            s.sendall(data + b"\n")
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused as oversized and closed while we were still sending
        out = b""
        try:
            while chunk := s.recv(1 << 16):
                out += chunk
        except ConnectionResetError:
            pass
    return out.splitlines()


@LIVE
@given(st.lists(request_lines() | st.binary(max_size=200), min_size=1, max_size=10))
def test_live_supervisor_survives_and_changes_nothing(live: Guest, inputs: list[bytes]) -> None:
    before = _state(live)
    path = _sock(live)
    inputs = [d for d in inputs if not _changes_something(d, before["info"]["gen"])]
    assume(inputs)
    for data in inputs:
        TRIED["live supervisor"] += 1
        for line in _exchange(path, data):
            reply = json.loads(line)
            if reply["ok"]:  # only the read-only requests may succeed
                assert reply["state"] == before["info"]["state"]
            else:
                assert reply["error"] in ("InvalidArgument", "BackendError", "IllegalTransition")
                assert 0 < len(reply["message"]) <= wire.MAX_ERROR
    assert live.proc.poll() is None, "the supervisor died"
    assert _state(live) == before


def test_zz_inputs_tried(capsys: pytest.CaptureFixture[str]) -> None:
    """Last in the module: say how many inputs the tests above tried (shown even when pytest
    captures output)."""
    counts = ", ".join(f"{name} {n}" for name, n in sorted(TRIED.items()))
    with capsys.disabled():
        print(f"\nfuzz inputs tried: {counts or 'none'} (total {sum(TRIED.values())})")
