"""Verified downloads into the cache: partial file, HTTP Range resume, sha256, lock file, quarantine.

Layout under the cache directory (DIFFBENCH_HOME, else $XDG_CACHE_HOME/diffbench, else ~/.cache/diffbench):

    checkpoints/<name>/<file>        files of registry entries
    urls/<key>/<file>                files fetched from a plain http(s) URL (key = sha256 of the URL)
    quarantine/<time>-<file>         files whose sha256 did not match; never loaded
    lock.json                        sha256 and size recorded by the first verified download of a URL
                                     that has no published hash; later downloads must match it

A download goes to `<file>.part`, resumes from its length with a Range request, is hashed while it
streams, and is renamed into place (atomically, same directory) only once its size and hash check out.
Only the standard library talks HTTP (urllib.request).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from diffbench.errors import ModelLoadError

Progress = Callable[[int, "int | None"], None]

CHUNK = 1 << 20
USER_AGENT = "diffbench (python urllib)"
LOCK_NAME = "lock.json"


class IncompleteDownload(ModelLoadError):
    """The connection stopped before the whole file arrived; the partial file is kept for a resume."""


@dataclass(frozen=True)
class FetchResult:
    """Where a verified file lies, its sha256 and size, and how it got there."""

    path: Path
    url: str
    sha256: str
    size: int
    downloaded: bool  # False when an already cached copy was verified and used
    recorded: bool  # True when no hash was known and this download wrote it to the lock file
    source: str = "published"  # where the expected hash came from: 'published' or 'lock file'

    @property
    def checked_against(self) -> str:
        """'published', 'lock file' or 'recorded now' (first download of a file with no known hash)."""
        return "recorded now" if self.recorded else self.source


def cache_dir() -> Path:
    """The cache root: $DIFFBENCH_HOME, else the user cache dir ($XDG_CACHE_HOME or ~/.cache) / diffbench."""
    home = os.environ.get("DIFFBENCH_HOME")
    if home:
        return Path(home).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "diffbench"


def entry_dir(name: str, *, root: Path | None = None) -> Path:
    """Directory holding the files of registry entry `name`."""
    return (root or cache_dir()) / "checkpoints" / name


def url_dest(url: str, *, root: Path | None = None) -> Path:
    """Cache path for a file fetched from a plain URL: urls/<sha256(url)[:16]>/<basename>."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return (root or cache_dir()) / "urls" / key / url_basename(url)


def url_basename(url: str) -> str:
    """Last path component of a URL, made safe as a file name."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return name if name and name not in (".", "..") else "download"


def sha256_file(path: Path, *, progress: Progress | None = None) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return h.hexdigest()


# --- lock file -------------------------------------------------------------------------------------------


def read_lock(*, root: Path | None = None) -> dict[str, dict]:
    """The lock file's records, keyed by URL (empty when there is none)."""
    path = (root or cache_dir()) / LOCK_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"lock file {path} is unreadable ({exc}); fix or delete it") from None
    if not isinstance(data, dict) or not isinstance(data.get("files", {}), dict):
        raise ModelLoadError(f"lock file {path} is not a diffbench lock file; fix or delete it")
    return data.get("files", {})


def _write_lock(records: dict[str, dict], *, root: Path) -> None:
    """Rewrite the lock file atomically (temp file in the same directory, then rename)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    tmp = path.with_name(f".{LOCK_NAME}.{os.getpid()}.tmp")
    body = {
        "comment": "sha256 recorded by diffbench's first verified download where none is published",
        "files": records,
    }
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def exclusive(key: str, *, root: Path | None = None) -> Iterator[None]:
    """Hold an inter-process lock named by `key` (flock on locks/<hash>.lock; a no-op without fcntl).

    Several processes (torchrun ranks) asking for the same file then download it once.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent downloads of one file are not guarded
        yield
        return
    ldir = (root or cache_dir()) / "locks"
    ldir.mkdir(parents=True, exist_ok=True)
    with open(ldir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def record_hash(url: str, *, sha256: str, size: int, root: Path | None = None) -> None:
    """Record the hash and size of a first verified download of `url` in the lock file."""
    root = root or cache_dir()
    with exclusive(LOCK_NAME, root=root):
        records = read_lock(root=root)
        if url in records:  # recorded by another process meanwhile: that record stands
            return
        records[url] = {
            "sha256": sha256,
            "size": size,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _write_lock(records, root=root)


def expected_for(
    url: str, *, sha256: str | None, size: int | None, root: Path | None = None
) -> tuple[str | None, int | None, bool]:
    """(sha256, size, from_lock): the published values, else those the lock file recorded."""
    if sha256:
        return sha256.lower(), size, False
    rec = read_lock(root=root).get(url)
    if rec:
        return str(rec["sha256"]).lower(), size if size is not None else rec.get("size"), True
    return None, size, False


# --- quarantine ------------------------------------------------------------------------------------------


def quarantine(path: Path, *, root: Path | None = None) -> Path:
    """Move a file that failed verification out of the cache's live paths; return where it went."""
    qdir = (root or cache_dir()) / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    base = path.name[:-5] if path.name.endswith(".part") else path.name
    target = qdir / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{base}"
    os.replace(path, target)
    return target


def check_file(
    path: Path,
    *,
    url: str,
    sha256: str | None,
    size: int | None,
    root: Path | None = None,
    progress: Progress | None = None,
) -> tuple[str, int]:
    """Hash a cached file and compare it with the expected hash/size; quarantine it on a mismatch."""
    root = root or cache_dir()
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        where = quarantine(path, root=root)
        raise ModelLoadError(f"{path.name}: size {actual_size} bytes, expected {size}; moved to {where}, never loaded")
    digest = sha256_file(path, progress=progress)
    if sha256 and digest != sha256:
        where = quarantine(path, root=root)
        raise ModelLoadError(
            f"{path.name}: sha256 {digest[:16]}… does not match the expected {sha256[:16]}…; "
            f"moved to {where}, never loaded"
        )
    return digest, actual_size


# --- download --------------------------------------------------------------------------------------------


def _open(url: str, *, start: int, timeout: float):
    """Open `url`, asking for bytes from `start` on; map HTTP and network failures to ModelLoadError."""
    headers = {"User-Agent": USER_AGENT}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https/file only, checked)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start > 0:
            return None  # the partial file is already as long as (or longer than) the resource
        raise ModelLoadError(f"HTTP {exc.code} {exc.reason} fetching {url}") from None
    except urllib.error.URLError as exc:
        raise ModelLoadError(f"cannot reach {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot fetch {url}: {exc}") from None


def _content_range_start(value: str | None) -> int | None:
    """First byte position of a Content-Range header 'bytes a-b/n'."""
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _stream(url: str, part: Path, *, timeout: float, progress: Progress | None) -> int | None:
    """One attempt: append the rest of `url` to `part` (resuming with Range); return the total size if known.

    Raises ModelLoadError when the connection stops before the announced length; the partial file stays.
    """
    start = part.stat().st_size if part.exists() else 0
    resp = _open(url, start=start, timeout=timeout)
    if resp is None:  # 416: range not satisfiable; restart from scratch
        part.unlink()
        start = 0
        resp = _open(url, start=0, timeout=timeout)
    with contextlib.closing(resp):
        status = getattr(resp, "status", 200) or 200
        length = resp.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if start > 0 and status == 206 and _content_range_start(resp.headers.get("Content-Range")) == start:
            mode = "ab"
            total = start + length if length is not None else None
        else:  # the server ignored the range (200): start over
            mode, start = "wb", 0
            total = length
        done = start
        if progress is not None:
            progress(done, total)
        with open(part, mode) as f:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, ValueError) as exc:  # reset connection, IncompleteRead, timeout
                    f.flush()
                    raise IncompleteDownload(
                        f"download of {url} stopped at {done} bytes ({exc}); run again to resume"
                    ) from None
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    if total is not None and done < total:
        raise IncompleteDownload(f"download of {url} stopped at {done} of {total} bytes; run again to resume")
    return total if total is not None else done


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    offline: bool = False,
    retries: int = 2,
    backoff: float = 0.5,
    timeout: float = 60.0,
    progress: Progress | None = None,
    root: Path | None = None,
) -> FetchResult:
    """Return a verified copy of `url` at `dest`, downloading it (resumably) if it is not cached.

    The expected sha256 is the published one, else the one the lock file recorded; with neither, the
    first complete download records its hash (result.recorded). A file that fails the check is moved to
    quarantine/ and an error is raised: it is never returned. `offline` never touches the network.
    """
    root = root or cache_dir()
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise ModelLoadError(f"cannot fetch '{url}': only http(s) URLs are supported")
    dest = Path(dest)
    if dest.exists():
        return _verify_cached(url, dest, sha256=sha256, size=size, root=root)
    if offline:
        raise ModelLoadError(
            f"{dest.name} is not in the cache ({dest.parent}) and offline mode forbids downloading {url}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(str(dest.resolve()), root=root):
        if dest.exists():  # another process finished it while this one waited
            return _verify_cached(url, dest, sha256=sha256, size=size, root=root)
        return _download_locked(
            url,
            dest,
            sha256=sha256,
            size=size,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            progress=progress,
            root=root,
        )


def _verify_cached(url: str, dest: Path, *, sha256: str | None, size: int | None, root: Path) -> FetchResult:
    """Check a cached file against the published or locked hash (recording it if there is none)."""
    want_sha, want_size, locked = expected_for(url, sha256=sha256, size=size, root=root)
    digest, nbytes = check_file(dest, url=url, sha256=want_sha, size=want_size, root=root)
    if want_sha is None:
        record_hash(url, sha256=digest, size=nbytes, root=root)
    source = "lock file" if locked else "published"
    return FetchResult(dest, url, digest, nbytes, downloaded=False, recorded=want_sha is None, source=source)


def _download_locked(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    size: int | None,
    retries: int,
    backoff: float,
    timeout: float,
    progress: Progress | None,
    root: Path,
) -> FetchResult:
    """The download proper, under the file's inter-process lock: stream, verify, rename, record."""
    want_sha, want_size, locked = expected_for(url, sha256=sha256, size=size, root=root)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _stream(url, part, timeout=timeout, progress=progress)
            break
        except IncompleteDownload:
            attempt += 1
            if attempt > retries:
                raise
            time.sleep(min(backoff * 2 ** (attempt - 1), 10.0))
    digest, nbytes = check_file(part, url=url, sha256=want_sha, size=want_size, root=root)
    os.replace(part, dest)
    recorded = False
    if want_sha is None:
        record_hash(url, sha256=digest, size=nbytes, root=root)
        recorded = True
    source = "lock file" if locked else "published"
    return FetchResult(dest, url, digest, nbytes, downloaded=True, recorded=recorded, source=source)
