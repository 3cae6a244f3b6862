"""Verified downloads against a local HTTP server: full, resume, wrong hash, 404, cut mid-file."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import threading
from pathlib import Path

import pytest

from diffbench.errors import ModelLoadError
from diffbench.models import fetch


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.files; honours Range; can cut a response after server.cut_after bytes."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not srv.ignore_range:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if srv.cuts_left > 0:  # announce the full length, send part of it, hang up
            srv.cuts_left -= 1
            self.wfile.write(payload[: srv.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture()
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.log, srv.cuts_left, srv.cut_after, srv.ignore_range = {}, [], 0, 0, False
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    root = tmp_path / "home"
    monkeypatch.setenv("DIFFBENCH_HOME", str(root))
    return root


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
