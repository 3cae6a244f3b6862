"""Verified downloads against a local HTTP server: full, resume, wrong hash, 404, cut mid-file."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from diffbench.errors import ModelLoadError
from diffbench.models import fetch


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.files with a strong ETag; honours Range and If-Range; faults are set on the server.

    cuts_left/cut_after: announce the full length, send cut_after bytes, hang up (cuts_left times).
    ignore_range: always answer 200. no_validator: send no ETag / Last-Modified. ignore_if_range: answer
    206 even when If-Range names another version. range_shift: a 206 whose Content-Range starts that many
    bytes off. close_delimited: no Content-Length (the body ends when the connection closes). stall: seconds
    to wait after the first stall_after bytes. on_request: called with the request count before answering.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        srv.if_range.append(self.headers.get("If-Range"))
        if srv.on_request is not None:
            srv.on_request(len(srv.log))
        body = srv.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        start = 0
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if_range = self.headers.get("If-Range")
        same = if_range is None or if_range == etag or srv.ignore_if_range
        if m and not srv.ignore_range and same:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            first = start + srv.range_shift
            self.send_header("Content-Range", f"bytes {first}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        if not srv.no_validator:
            self.send_header("ETag", etag)
        payload = body[start:]
        if not srv.close_delimited:
            self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if srv.cuts_left > 0:  # send part of it, hang up
            srv.cuts_left -= 1
            self.wfile.write(payload[: srv.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        if srv.stall:
            self.wfile.write(payload[: srv.stall_after])
            self.wfile.flush()
            time.sleep(srv.stall)
            return
        self.wfile.write(payload)


@pytest.fixture()
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.log, srv.if_range, srv.cuts_left, srv.cut_after = {}, [], [], 0, 0
    srv.ignore_range = srv.no_validator = srv.ignore_if_range = srv.close_delimited = False
    srv.range_shift, srv.stall, srv.stall_after, srv.on_request = 0, 0.0, 0, None
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _blob(n: int, seed: int = 0) -> bytes:
    return bytes((i * 131 + seed * 7 + (i >> 8)) % 256 for i in range(n))


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _live_files(root: Path) -> list[Path]:
    """Files under the cache other than quarantine, inter-process locks and the lock file."""
    skip = {"quarantine", "locks"}
    return [p for p in root.rglob("*") if p.is_file() and not skip & set(p.parts) and p.name != "lock.json"]


def test_cache_dir_env_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFBENCH_HOME", str(tmp_path / "x"))
    assert fetch.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("DIFFBENCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert fetch.cache_dir() == tmp_path / "c" / "diffbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert fetch.cache_dir() == Path.home() / ".cache" / "diffbench"


def test_full_download_with_known_hash_and_progress(server, home):
    body = _blob(3_000_000)
    server.files["/m.pkl"] = body
    calls = []
    res = fetch.download(
        server.url + "/m.pkl",
        home / "d" / "m.pkl",
        sha256=_sha(body),
        size=len(body),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert res.path.read_bytes() == body and res.sha256 == _sha(body) and res.size == len(body)
    assert res.downloaded and not res.recorded
    done = [d for d, _ in calls]
    assert calls[-1] == (len(body), len(body)) and done == sorted(done)
    assert not (home / "d" / "m.pkl.part").exists()
    # the second call uses the cached copy (re-hashed), without a request
    n = len(server.log)
    again = fetch.download(server.url + "/m.pkl", home / "d" / "m.pkl", sha256=_sha(body))
    assert not again.downloaded and len(server.log) == n


def test_unknown_hash_recorded_then_enforced(server, home):
    url = server.url + "/stats.npz"
    body = _blob(50_000, seed=1)
    server.files["/stats.npz"] = body
    dest = home / "r" / "stats.npz"
    res = fetch.download(url, dest)
    assert res.recorded and fetch.read_lock()[url]["sha256"] == _sha(body)
    assert json.loads((home / "lock.json").read_text())["files"][url]["size"] == len(body)
    # the server now serves different bytes: a fresh download must match the recorded hash
    dest.unlink()
    server.files["/stats.npz"] = _blob(50_000, seed=2)
    with pytest.raises(ModelLoadError, match="does not match"):
        fetch.download(url, dest)
    assert not dest.exists() and _live_files(home) == []
    assert len(list((home / "quarantine").iterdir())) == 1


def test_resume_after_cut_connection(server, home):
    body = _blob(2_500_000, seed=3)
    server.files["/big.pkl"] = body
    server.cuts_left, server.cut_after = 1, 1_000_000
    dest = home / "d" / "big.pkl"
    with pytest.raises(ModelLoadError, match="stopped at 1000000 of 2500000 bytes"):
        fetch.download(server.url + "/big.pkl", dest, sha256=_sha(body), retries=0)
    part = dest.with_name("big.pkl.part")
    assert part.stat().st_size == 1_000_000 and not dest.exists()
    res = fetch.download(server.url + "/big.pkl", dest, sha256=_sha(body), retries=0)
    assert res.path.read_bytes() == body and not part.exists()
    assert server.log[-1] == ("/big.pkl", "bytes=1000000-")


def test_retries_resume_within_one_call(server, home):
    body = _blob(1_200_000, seed=4)
    server.files["/f.bin"] = body
    server.cuts_left, server.cut_after = 2, 300_000
    res = fetch.download(server.url + "/f.bin", home / "f.bin", sha256=_sha(body), retries=2, backoff=0)
    assert res.path.read_bytes() == body
    assert [r for _, r in server.log] == [None, "bytes=300000-", "bytes=600000-"]


def test_server_ignoring_range_restarts_cleanly(server, home):
    body = _blob(400_000, seed=5)
    server.files["/g.bin"] = body
    server.cuts_left, server.cut_after, server.ignore_range = 1, 100_000, True
    res = fetch.download(server.url + "/g.bin", home / "g.bin", sha256=_sha(body), retries=1, backoff=0)
    assert res.path.read_bytes() == body


def test_wrong_hash_is_quarantined(server, home):
    body = _blob(10_000, seed=6)
    server.files["/w.pkl"] = body
    dest = home / "d" / "w.pkl"
    with pytest.raises(ModelLoadError, match="never loaded"):
        fetch.download(server.url + "/w.pkl", dest, sha256="0" * 64)
    assert _live_files(home) == []
    (q,) = (home / "quarantine").iterdir()
    assert q.read_bytes() == body and q.name.endswith("-w.pkl")


def test_wrong_size_is_quarantined(server, home):
    server.files["/s.bin"] = _blob(1000)
    with pytest.raises(ModelLoadError, match="size 1000 bytes, expected 999"):
        fetch.download(server.url + "/s.bin", home / "s.bin", size=999)
    assert _live_files(home) == []


def test_corrupted_cache_file_is_quarantined_not_used(server, home):
    body = _blob(5000, seed=7)
    server.files["/c.bin"] = body
    dest = home / "c.bin"
    fetch.download(server.url + "/c.bin", dest, sha256=_sha(body))
    dest.write_bytes(body[:-1] + b"\x00")
    with pytest.raises(ModelLoadError, match="does not match"):
        fetch.download(server.url + "/c.bin", dest, sha256=_sha(body), offline=True)
    assert not dest.exists()


def test_404_leaves_nothing(server, home):
    with pytest.raises(ModelLoadError, match="HTTP 404"):
        fetch.download(server.url + "/missing.pkl", home / "d" / "missing.pkl")
    assert _live_files(home) == [] and not (home / "lock.json").exists()


def test_server_stops_mid_file_every_time(server, home):
    body = _blob(300_000, seed=8)
    server.files["/x.bin"] = body
    server.cuts_left, server.cut_after = 10, 50_000
    with pytest.raises(ModelLoadError, match="run again to resume"):
        fetch.download(server.url + "/x.bin", home / "x.bin", sha256=_sha(body), retries=2, backoff=0)
    assert not (home / "x.bin").exists()
    assert (home / "x.bin.part").stat().st_size == 150_000  # three attempts, each resumed


def test_unreachable_host_is_one_line(home):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port now
    with pytest.raises(ModelLoadError, match="cannot reach") as info:
        fetch.download(f"http://127.0.0.1:{port}/a.pkl", home / "a.pkl", timeout=5)
    assert "\n" not in str(info.value)


def test_offline_never_touches_network(server, home, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("network used in offline mode")

    monkeypatch.setattr(fetch.urllib.request, "urlopen", boom)
    with pytest.raises(ModelLoadError, match="offline"):
        fetch.download(server.url + "/m.pkl", home / "m.pkl", offline=True)
    assert server.log == []


def test_416_on_stale_complete_partial(server, home):
    body = _blob(20_000, seed=9)
    server.files["/p.bin"] = body
    dest = home / "p.bin"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_name("p.bin.part").write_bytes(b"\x01" * 30_000)  # longer than the file: server says 416
    res = fetch.download(server.url + "/p.bin", dest, sha256=_sha(body))
    assert res.path.read_bytes() == body


def test_url_dest_and_basename(home):
    d = fetch.url_dest("https://example.org/a/b/net%20work.pkl?x=1")
    assert d.parent.parent == home / "urls" and d.name == "net_work.pkl"
    assert fetch.url_basename("https://example.org/") == "download"
    with pytest.raises(ModelLoadError, match="only http"):
        fetch.download("ftp://example.org/x", home / "x")


def test_unreadable_lock_file_is_one_line(home):
    home.mkdir(parents=True)
    (home / "lock.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="lock file"):
        fetch.read_lock()
    assert os.path.exists(home / "lock.json")


def test_concurrent_fetch_of_one_file_downloads_once(server, home):
    """A second process asking for a file another one is downloading waits, then uses the finished copy."""
    body = _blob(100_000, seed=10)
    server.files["/shared.pkl"] = body
    dest = home / "d" / "shared.pkl"
    dest.parent.mkdir(parents=True)
    results = []
    with fetch.exclusive(str(dest.resolve())):  # stands in for another rank's download in progress
        waiter = threading.Thread(target=lambda: results.append(fetch.download(server.url + "/shared.pkl", dest)))
        waiter.start()
        waiter.join(timeout=0.3)
        assert waiter.is_alive() and server.log == []  # blocked on the lock, no request made
        dest.write_bytes(body)  # the other rank finishes
    waiter.join(timeout=10)
    (res,) = results
    assert not res.downloaded and res.sha256 == _sha(body) and server.log == []


# ------------------------------------------------ download faults: verified file or one line, nothing pinned


def _pickle_bytes(n: int = 40_000) -> bytes:
    import pickle

    return pickle.dumps({"ema": list(range(n)), "blob": _blob(200_000, seed=11)}, protocol=4)


def _state_dict_bytes(tmp_path) -> bytes:
    import torch

    torch.save({"w": torch.arange(60_000, dtype=torch.float32)}, tmp_path / "sd.pt")
    return (tmp_path / "sd.pt").read_bytes()


def _safetensors_bytes() -> bytes:
    data = _blob(80_000, seed=12)
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}).encode()
    return len(header).to_bytes(8, "little") + header + data


def _npz_bytes(tmp_path) -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "st.npz", mu=rng.standard_normal(64), sigma=np.eye(64))
    return (tmp_path / "st.npz").read_bytes()


def _nothing_pinned(home: Path, url: str) -> bool:
    lock = home / "lock.json"
    return not lock.exists() or url not in json.loads(lock.read_text())["files"]


HTML = b"<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head><body>busy</body></html>\n"


def test_html_page_instead_of_the_file_is_quarantined_then_the_real_file_is_pinned(server, home):
    from diffbench.models.validate import check_edm_pickle

    url, dest = server.url + "/net.pkl", home / "checkpoints" / "net" / "net.pkl"
    server.files["/net.pkl"] = HTML
    with pytest.raises(ModelLoadError, match="HTML or XML page") as info:
        fetch.download(url, dest, check=check_edm_pickle)
    assert "\n" not in str(info.value) and "nothing cached or pinned" in str(info.value)
    assert _live_files(home) == [] and _nothing_pinned(home, url)
    (q,) = (home / "quarantine").iterdir()
    assert q.read_bytes() == HTML
    server.files["/net.pkl"] = body = _pickle_bytes()  # the server recovers: the real file is fetched and pinned
    res = fetch.download(url, dest, check=check_edm_pickle)
    assert res.recorded and dest.read_bytes() == body and fetch.read_lock()[url]["sha256"] == _sha(body)


@pytest.mark.parametrize("server_kind", ["honours If-Range", "ignores If-Range", "no validator"])
def test_content_changed_between_attempts_is_never_spliced(server, home, server_kind):
    """A resume after the remote file changed restarts from zero: the file is the new one, whole."""
    old, new = _blob(600_000, seed=13), _blob(600_000, seed=14)
    server.files["/f.bin"] = old
    server.cuts_left, server.cut_after = 1, 250_000
    server.ignore_if_range = server_kind == "ignores If-Range"
    server.no_validator = server_kind == "no validator"
    url, dest = server.url + "/f.bin", home / "f.bin"
    with pytest.raises(ModelLoadError, match="run again to resume"):
        fetch.download(url, dest, retries=0)
    server.files["/f.bin"] = new
    res = fetch.download(url, dest, retries=1, backoff=0)
    assert dest.read_bytes() == new and fetch.read_lock()[url]["sha256"] == _sha(new) == res.sha256
    if server_kind == "no validator":  # nothing guarantees the bytes: no Range asked at all
        assert server.log[1] == ("/f.bin", None)
    else:  # the resume quoted the first response's ETag
        assert server.log[1] == ("/f.bin", "bytes=250000-") and server.if_range[1] == f'"{_sha(old)[:16]}"'


def test_content_changed_against_a_known_hash_is_one_line(server, home):
    old, new = _blob(300_000, seed=15), _blob(300_000, seed=16)
    server.files["/k.bin"] = old
    server.cuts_left, server.cut_after = 1, 100_000
    url, dest = server.url + "/k.bin", home / "k.bin"
    with pytest.raises(ModelLoadError):
        fetch.download(url, dest, sha256=_sha(old), retries=0)
    server.files["/k.bin"] = new
    with pytest.raises(ModelLoadError, match="does not match") as info:
        fetch.download(url, dest, sha256=_sha(old), retries=0)
    assert "\n" not in str(info.value) and _live_files(home) == [] and _nothing_pinned(home, url)


@pytest.mark.parametrize("shift", [5, -1000])
def test_wrong_content_range_is_never_appended(server, home, shift):
    body = _blob(500_000, seed=17)
    server.files["/r.bin"] = body
    server.cuts_left, server.cut_after, server.range_shift = 1, 200_000, shift
    url, dest = server.url + "/r.bin", home / "r.bin"
    with pytest.raises(ModelLoadError, match="run again to resume"):
        fetch.download(url, dest, retries=0)
    with pytest.raises(ModelLoadError, match=f"bytes from 200000 with bytes from {200_000 + shift}") as info:
        fetch.download(url, dest, retries=0)
    assert "\n" not in str(info.value) and "nothing was cached or pinned" in str(info.value)
    assert _live_files(home) == [] and _nothing_pinned(home, url)
    server.range_shift = 0  # with a retry, the next attempt starts from zero and gives the whole file
    server.cuts_left = 1
    res = fetch.download(url, dest, retries=2, backoff=0)
    assert dest.read_bytes() == body and res.sha256 == _sha(body)


@pytest.mark.parametrize("kind", ["edm-pickle", "state-dict", "safetensors", "fid-stats-npz"])
def test_truncated_close_delimited_body_is_refused_by_its_format_check(server, home, tmp_path, kind):
    """No Content-Length, connection closed early: only the format check can tell; it does."""
    from diffbench.models import validate

    body, check = {
        "edm-pickle": (_pickle_bytes(), validate.check_edm_pickle),
        "state-dict": (_state_dict_bytes(tmp_path), validate.check_state_dict),
        "safetensors": (_safetensors_bytes(), validate.check_state_dict),
        "fid-stats-npz": (_npz_bytes(tmp_path), validate.check_fid_stats),
    }[kind]
    server.files["/t.bin"] = body
    server.close_delimited, server.cuts_left, server.cut_after = True, 1, len(body) * 2 // 3
    url, dest = server.url + "/t.bin", home / "t.bin"
    with pytest.raises(ModelLoadError, match="ends early|no directory|not a complete") as info:
        fetch.download(url, dest, check=check, retries=0)
    assert "\n" not in str(info.value) and "nothing cached or pinned" in str(info.value)
    assert _live_files(home) == [] and _nothing_pinned(home, url)
    res = fetch.download(url, dest, check=check)  # whole this time: verified and pinned
    assert dest.read_bytes() == body and res.recorded


def test_stalled_server_times_out_with_one_line_then_resumes(server, home):
    body = _blob(400_000, seed=18)
    server.files["/s.bin"] = body
    server.stall, server.stall_after = 2.0, 100_000
    url, dest = server.url + "/s.bin", home / "s.bin"
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"stopped at 100000 bytes \(no data for 0.3 s\)") as info:
        fetch.download(url, dest, timeout=0.3, retries=0)
    assert time.monotonic() - t0 < 1.9 and "\n" not in str(info.value)
    assert not dest.exists() and _nothing_pinned(home, url)
    server.stall = 0.0
    res = fetch.download(url, dest, timeout=5, retries=0)
    assert dest.read_bytes() == body and res.sha256 == _sha(body)
    assert server.log[-1] == ("/s.bin", "bytes=100000-")


def test_quarantined_files_never_overwrite_each_other(server, home):
    from diffbench.models.validate import check_edm_pickle

    server.files["/q.pkl"] = HTML
    for _ in range(4):
        with pytest.raises(ModelLoadError):
            fetch.download(server.url + "/q.pkl", home / "q.pkl", check=check_edm_pickle)
    assert len(list((home / "quarantine").iterdir())) == 4


def test_file_placed_by_hand_is_format_checked_before_pinning(home):
    from diffbench.models.validate import check_edm_pickle

    url, dest = "https://example.invalid/h.pkl", home / "h.pkl"
    home.mkdir(parents=True)
    dest.write_bytes(_pickle_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="ends early"):
        fetch.download(url, dest, offline=True, check=check_edm_pickle)
    assert not dest.exists() and _nothing_pinned(home, url)
    dest.write_bytes(body := _pickle_bytes())
    res = fetch.download(url, dest, offline=True, check=check_edm_pickle)
    assert res.recorded and res.sha256 == _sha(body)


def test_hash_prefix_is_checked_before_pinning(server, home):
    body = _blob(5000, seed=19)
    server.files["/weights-x-00000000.pth"] = body
    url = server.url + "/weights-x-00000000.pth"
    with pytest.raises(ModelLoadError, match="does not start with 00000000"):
        fetch.download(url, home / "w.pth", prefix="00000000")
    assert _nothing_pinned(home, url) and _live_files(home) == []
    res = fetch.download(url, home / "w.pth", prefix=_sha(body)[:8])
    assert res.recorded


def test_unreachable_host_says_how_to_place_the_file(home):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    dest = home / "checkpoints" / "m" / "m.pkl"
    with pytest.raises(ModelLoadError, match="cannot reach") as info:
        fetch.download(f"http://127.0.0.1:{port}/m.pkl", dest, timeout=5, hint="; or pass its path as MODEL")
    msg = str(info.value)
    assert f"save it as {dest}" in msg and msg.endswith("or pass its path as MODEL") and "\n" not in msg


def test_diffbench_home_that_is_a_file_or_unwritable_is_one_line(tmp_path, monkeypatch, server):
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("DIFFBENCH_HOME", str(afile))
    with pytest.raises(ModelLoadError, match="is a file, not a directory") as info:
        fetch.cache_dir()
    assert "\n" not in str(info.value)
    server.files["/u.bin"] = b"x" * 10
    for place in (afile / "sub", Path("/proc/diffbench-cache")):
        monkeypatch.setenv("DIFFBENCH_HOME", str(place))
        with pytest.raises(ModelLoadError, match="cannot write to the cache") as info:
            fetch.download(server.url + "/u.bin", fetch.url_dest(server.url + "/u.bin"))
        assert "DIFFBENCH_HOME" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("record", [{"size": 3}, {"sha256": None}, {"sha256": "abc"}, "text"])
def test_lock_record_without_sha256_is_one_line_and_can_be_forgotten(home, record):
    home.mkdir(parents=True)
    url = "https://example.org/x.pkl"
    (home / "lock.json").write_text(json.dumps({"files": {url: record}}))
    with pytest.raises(ModelLoadError, match=f"record for {url} has no valid sha256.*checkpoints forget") as info:
        fetch.expected_for(url, sha256=None, size=None)
    assert "\n" not in str(info.value)
    assert fetch.forget(url) == record and fetch.read_lock() == {}
    assert fetch.forget(url) is None
