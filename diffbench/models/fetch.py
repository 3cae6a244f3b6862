"""Verified downloads into the cache: partial file, HTTP Range resume, sha256, lock file, quarantine.

Layout under the cache directory (DIFFBENCH_HOME, else $XDG_CACHE_HOME/diffbench, else ~/.cache/diffbench):

    checkpoints/<name>/<file>        files of registry entries
    urls/<key>/<file>                files fetched from a plain http(s) URL (key = sha256 of the URL)
    quarantine/<time>-<pid>-<rand>-<file>   files that failed verification (hash, size or format); never loaded
    lock.json                        sha256 and size recorded by the first verified download of a URL
                                     that has no published hash; later downloads must match it

A download goes to `<file>.part` (with `<file>.part.json` holding the first response's ETag or
Last-Modified), resumes from its length with a Range request guarded by If-Range, and is renamed into place
(atomically, same directory) only once its size, hash and format check out. A resume whose answer does not
continue the same bytes (another Content-Range start, a changed or missing validator) starts over from zero.
Only the standard library talks HTTP (urllib.request).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
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
        root = Path(home).expanduser()
        if root.exists() and not root.is_dir():
            raise ModelLoadError(
                f"DIFFBENCH_HOME={home} is a file, not a directory; point it at a folder for the cache"
            )
        return root
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    root = Path(base).expanduser() / "diffbench"
    if root.exists() and not root.is_dir():
        raise ModelLoadError(f"the cache path {root} is a file, not a directory; set DIFFBENCH_HOME to a folder")
    return root


def make_dir(path: Path, *, root: Path | None = None) -> Path:
    """mkdir -p, as one clear line when the cache is not writable (or a file sits in the way)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = root or path
        raise ModelLoadError(
            f"cannot write to the cache {where}: {exc.strerror or exc} (set DIFFBENCH_HOME to a writable folder)"
        ) from None
    return path


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


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def read_lock(*, root: Path | None = None, strict: bool = True) -> dict[str, dict]:
    """The lock file's records, keyed by URL (empty when there is none).

    strict: every record must carry a 64-hex-digit sha256 (else one line naming the URL and the way out);
    `strict=False` returns the records as they are (for `checkpoints forget`).
    """
    path = (root or cache_dir()) / LOCK_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"lock file {path} is unreadable ({exc}); fix or delete it") from None
    if not isinstance(data, dict) or not isinstance(data.get("files", {}), dict):
        raise ModelLoadError(f"lock file {path} is not a diffbench lock file; fix or delete it")
    records = data.get("files", {})
    if strict:
        for url, rec in records.items():
            sha = rec.get("sha256") if isinstance(rec, dict) else None
            size = rec.get("size") if isinstance(rec, dict) else None
            if not isinstance(sha, str) or not _HEX64.fullmatch(sha) or not (size is None or isinstance(size, int)):
                raise ModelLoadError(
                    f"lock file {path}: the record for {url} has no valid sha256; remove it with "
                    f"`diffbench checkpoints forget {url}` (or edit the file)"
                )
    return records


def forget(url: str, *, root: Path | None = None) -> dict | None:
    """Remove the lock file's record for `url`; return the record removed (None when there was none)."""
    root = root or cache_dir()
    with exclusive(LOCK_NAME, root=root):
        records = read_lock(root=root, strict=False)
        rec = records.pop(url, None)
        if rec is not None:
            _write_lock(records, root=root)
    return rec


def _write_lock(records: dict[str, dict], *, root: Path) -> None:
    """Rewrite the lock file atomically (temp file in the same directory, then rename)."""
    make_dir(root, root=root)
    path = root / LOCK_NAME
    tmp = path.with_name(f".{LOCK_NAME}.{os.getpid()}.tmp")
    body = {
        "comment": "sha256 recorded by diffbench's first verified download where none is published",
        "files": records,
    }
    try:
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ModelLoadError(f"cannot write the lock file {path}: {exc.strerror or exc}") from None


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
    root = root or cache_dir()
    ldir = make_dir(root / "locks", root=root)
    try:
        handle = open(ldir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock", "a+b")  # noqa: SIM115
    except OSError as exc:
        raise ModelLoadError(f"cannot write to the cache {root}: {exc.strerror or exc}") from None
    with handle:
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
        return rec["sha256"].lower(), size if size is not None else rec.get("size"), True
    return None, size, False


# --- quarantine ------------------------------------------------------------------------------------------


def quarantine(path: Path, *, root: Path | None = None) -> Path:
    """Move a file that failed verification out of the cache's live paths; return where it went."""
    root = root or cache_dir()
    qdir = make_dir(root / "quarantine", root=root)
    base = path.name[:-5] if path.name.endswith(".part") else path.name
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    while True:  # a unique name: several refusals in one second never overwrite each other
        target = qdir / f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}-{base}"
        if not target.exists():
            break
    os.replace(path, target)
    meta = _meta_path(path)
    if meta.exists():
        meta.unlink()
    return target


def _meta_path(path: Path) -> Path:
    """`<file>.part.json`: the validator (ETag / Last-Modified) of the response a partial file came from."""
    part = path if path.name.endswith(".part") else path.with_name(path.name + ".part")
    return part.with_name(part.name + ".json")


def check_file(
    path: Path,
    *,
    url: str,
    sha256: str | None,
    size: int | None,
    root: Path | None = None,
    progress: Progress | None = None,
    prefix: str | None = None,
) -> tuple[str, int]:
    """Hash a file and compare it with the expected hash, size and hash prefix; quarantine it on a mismatch."""
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
    if prefix and not digest.startswith(prefix.lower()):
        where = quarantine(path, root=root)
        raise ModelLoadError(
            f"{path.name}: sha256 {digest[:16]}… does not start with {prefix}, the prefix its name carries; "
            f"moved to {where}, never loaded"
        )
    return digest, actual_size


def check_format(path: Path, check: Callable[[Path], None] | None, *, url: str, root: Path, name: str) -> None:
    """Run a format check on a finished file; a failing file goes to quarantine (never cached, never pinned)."""
    if check is None:
        return
    try:
        check(path)
    except ModelLoadError as exc:
        where = quarantine(path, root=root)
        text = str(exc)
        raise ModelLoadError(
            f"{name} from {url} is {text}; moved to {where}, nothing cached or pinned"
            if text.startswith("not ")
            else f"{name} from {url} failed its format check ({text}); moved to {where}, nothing cached or pinned"
        ) from None


# --- download --------------------------------------------------------------------------------------------


class Unreachable(ModelLoadError):
    """The host could not be reached (DNS, refused connection, no answer)."""


class RestartDownload(IncompleteDownload):
    """The server's answer does not continue the partial file; it was discarded and the next try starts at 0."""


def _open(url: str, *, start: int, validator: str | None, timeout: float):
    """Open `url`, asking for bytes from `start` on (If-Range guarded); map failures to ModelLoadError."""
    headers = {"User-Agent": USER_AGENT}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
        if validator:
            headers["If-Range"] = validator
    req = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https/file only, checked)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start > 0:
            return None  # the partial file is already as long as (or longer than) the resource
        raise ModelLoadError(f"HTTP {exc.code} {exc.reason} fetching {url}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, socket.timeout | TimeoutError):
            raise Unreachable(f"no answer from {url} within {timeout:g} s") from None
        raise Unreachable(f"cannot reach {url}: {reason}") from None
    except TimeoutError:
        raise Unreachable(f"no answer from {url} within {timeout:g} s") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot fetch {url}: {exc}") from None


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first, last, total or None) of a Content-Range header 'bytes a-b/n'."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), None if m.group(3) == "*" else int(m.group(3))


def _content_range_start(value: str | None) -> int | None:
    """First byte position of a Content-Range header 'bytes a-b/n'."""
    cr = _content_range(value)
    return cr[0] if cr else None


def _validator(headers) -> str | None:
    """The response's strong ETag, else its Last-Modified: what If-Range may quote (RFC 9110 §13.1.5)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified") or None


def _read_meta(part: Path, url: str) -> str | None:
    try:
        meta = json.loads(_meta_path(part).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("url") != url or not isinstance(meta.get("validator"), str):
        return None
    return meta["validator"]


def _write_meta(part: Path, url: str, validator: str | None) -> None:
    meta = _meta_path(part)
    if validator is None:
        if meta.exists():
            meta.unlink()
        return
    meta.write_text(json.dumps({"url": url, "validator": validator}) + "\n")


def _discard(part: Path) -> None:
    for p in (part, _meta_path(part)):
        if p.exists():
            p.unlink()


def _stream(url: str, part: Path, *, timeout: float, progress: Progress | None) -> int | None:
    """One attempt: append the rest of `url` to `part`; return the total size if known.

    A partial file is resumed only when the response that started it gave a validator (strong ETag or
    Last-Modified): the request then carries Range and If-Range, and the answer is appended only when it is a
    206 whose Content-Range starts at the partial file's length and whose validator is unchanged. Anything
    else starts over from zero. Raises IncompleteDownload when the connection stops early (partial kept).
    """
    start = part.stat().st_size if part.exists() else 0
    validator = _read_meta(part, url) if start > 0 else None
    if start > 0 and validator is None:  # nothing says the server still has the same bytes: start over
        _discard(part)
        start = 0
    resp = _open(url, start=start, validator=validator, timeout=timeout)
    if resp is None:  # 416: range not satisfiable; restart from scratch
        _discard(part)
        start = 0
        resp = _open(url, start=0, validator=None, timeout=timeout)
    with contextlib.closing(resp):
        status = getattr(resp, "status", 200) or 200
        length = resp.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        cr = _content_range(resp.headers.get("Content-Range"))
        got_validator = _validator(resp.headers)
        if status == 206:
            if cr is None or cr[0] != start:
                _discard(part)
                raise RestartDownload(
                    f"{url} answered a request for bytes from {start} with "
                    f"{'no usable Content-Range' if cr is None else f'bytes from {cr[0]}'}; "
                    "the partial file was discarded"
                )
            if start > 0 and got_validator is not None and got_validator != validator:
                _discard(part)
                raise RestartDownload(f"{url} changed while it was being downloaded; starting over")
            if length is not None and length != cr[1] - cr[0] + 1:
                _discard(part)
                raise RestartDownload(f"{url} sent a Content-Length that disagrees with its Content-Range")
            mode = "ab" if start > 0 else "wb"
            total = cr[2] if cr[2] is not None else (start + length if length is not None else None)
        elif status == 200:  # the whole resource: new, changed (If-Range failed) or ranges ignored
            mode, start = "wb", 0
            total = length
            _write_meta(part, url, got_validator)
        else:
            raise ModelLoadError(f"HTTP {status} fetching {url}: expected 200 or 206")
        done = start
        if progress is not None:
            progress(done, total)
        try:
            f = open(part, mode)  # noqa: SIM115
        except OSError as exc:
            raise ModelLoadError(f"cannot write {part}: {exc.strerror or exc}") from None
        read = getattr(resp, "read1", resp.read)  # read1: what has arrived, so a stall loses nothing received
        with f:
            while True:
                try:
                    chunk = read(CHUNK)
                except (OSError, ValueError) as exc:  # reset connection, IncompleteRead, timeout
                    f.flush()
                    why = f"no data for {timeout:g} s" if isinstance(exc, socket.timeout | TimeoutError) else exc
                    raise IncompleteDownload(
                        f"download of {url} stopped at {done} bytes ({why}); run again to resume"
                    ) from None
                if not chunk:
                    break
                if total is not None and done + len(chunk) > total:
                    _discard(part)
                    raise RestartDownload(f"{url} sent more bytes than the {total} it announced")
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
    check: Callable[[Path], None] | None = None,
    prefix: str | None = None,
    hint: str = "",
) -> FetchResult:
    """Return a verified copy of `url` at `dest`, downloading it (resumably) if it is not cached.

    The expected sha256 is the published one, else the one the lock file recorded; with neither, the
    first complete download records its hash (result.recorded), and only after the file passed `check`
    (its kind's format check) and, if given, starts with `prefix`. A file that fails any check is moved to
    quarantine/ and an error is raised: it is never returned, cached or pinned. `offline` never touches
    the network. `hint` is appended to the message when the host cannot be reached.
    """
    root = root or cache_dir()
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise ModelLoadError(f"cannot fetch '{url}': only http(s) URLs are supported")
    dest = Path(dest)
    if dest.exists():
        return _verify_cached(url, dest, sha256=sha256, size=size, root=root, check=check, prefix=prefix)
    if offline:
        raise ModelLoadError(
            f"{dest.name} is not in the cache ({dest.parent}) and offline mode forbids downloading {url}"
        )
    make_dir(dest.parent, root=root)
    with exclusive(str(dest.resolve()), root=root):
        if dest.exists():  # another process finished it while this one waited
            return _verify_cached(url, dest, sha256=sha256, size=size, root=root, check=check, prefix=prefix)
        try:
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
                check=check,
                prefix=prefix,
            )
        except Unreachable as exc:
            raise Unreachable(f"{exc}. To place the file by hand, download it and save it as {dest}{hint}") from None


def _verify_cached(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    size: int | None,
    root: Path,
    check: Callable[[Path], None] | None = None,
    prefix: str | None = None,
) -> FetchResult:
    """Check a cached file against the published or locked hash; a first-seen file is format-checked, then pinned."""
    want_sha, want_size, locked = expected_for(url, sha256=sha256, size=size, root=root)
    digest, nbytes = check_file(dest, url=url, sha256=want_sha, size=want_size, root=root, prefix=prefix)
    if want_sha is None:  # a file placed by hand (or by an older version): check it before pinning it
        check_format(dest, check, url=url, root=root, name=dest.name)
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
    check: Callable[[Path], None] | None = None,
    prefix: str | None = None,
) -> FetchResult:
    """The download proper, under the file's inter-process lock: stream, verify, check format, rename, record."""
    want_sha, want_size, locked = expected_for(url, sha256=sha256, size=size, root=root)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _stream(url, part, timeout=timeout, progress=progress)
            break
        except IncompleteDownload as exc:
            attempt += 1
            if attempt > retries:
                if isinstance(exc, RestartDownload):
                    raise ModelLoadError(f"{exc}; nothing was cached or pinned, run again to start over") from None
                raise
            time.sleep(min(backoff * 2 ** (attempt - 1), 10.0))
    digest, nbytes = check_file(part, url=url, sha256=want_sha, size=want_size, root=root, prefix=prefix)
    check_format(part, check, url=url, root=root, name=dest.name)
    try:
        os.replace(part, dest)
    except OSError as exc:
        raise ModelLoadError(f"cannot write {dest}: {exc.strerror or exc}") from None
    meta = _meta_path(part)
    if meta.exists():
        meta.unlink()
    recorded = False
    if want_sha is None:
        record_hash(url, sha256=digest, size=nbytes, root=root)
        recorded = True
    source = "lock file" if locked else "published"
    return FetchResult(dest, url, digest, nbytes, downloaded=True, recorded=recorded, source=source)
