"""Checkpoint registry (checkpoints.toml) and the one dispatch from a model spec to a Denoiser.

A spec is a registry name (fetched on demand into the cache and verified), a local path (an EDM .pkl, a
diffusers directory, a state dict with its JSON sidecar), an http(s) URL (downloaded into the cache), or
an entry point `package.module:factory`. The loaded model carries `.source_info` (format, sha256, path,
URL) for provenance.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from diffbench.errors import (
    ConfigError,
    DiffbenchError,
    MissingDependencyError,
    ModelLoadError,
    UnknownNameError,
)
from diffbench.models import fetch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

Progress = Callable[[int, "int | None"], None]

KINDS = ("model", "fid-stats", "extractor-weights")
FORMATS = ("edm-pickle", "diffusers", "state-dict", "fid-stats-npz")
ENTRY_KEYS = frozenset(
    {
        "kind",
        "url",
        "files",
        "format",
        "precond",
        "network",
        "architecture",
        "resolution",
        "channels",
        "label_dim",
        "fid_ref",
        "sha256",
        "sha256_prefix",
        "size",
        "approx_size_mb",
        "description",
        "sampler",
        "sampler_stochastic",
        "network_kwargs",
        "precond_kwargs",
    }
)
SAMPLER_KEYS = frozenset(
    {"solver", "schedule", "steps", "nfe", "churn", "s_min", "s_max", "s_noise", "expected_fid", "source"}
)
# the first bytes torch.save wrote before its zip format (pickled magic number 0x1950a86a20f9469cfc6c)
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoints.toml entry: where a file lives, what it holds, and how its paper sampled it."""

    name: str
    kind: str
    url: str
    format: str
    files: tuple[str, ...] = ()
    precond: str | None = None
    network: str | None = None
    architecture: str | None = None
    resolution: int | None = None
    channels: int | None = None
    label_dim: int | None = None
    fid_ref: str | None = None
    sha256: Mapping[str, str] = field(default_factory=dict)  # file name -> published hash
    sha256_prefix: str | None = None  # leading hex digits of the hash, as the file's name carries them
    size: Mapping[str, int] = field(default_factory=dict)  # file name -> published byte size
    approx_size_mb: float | None = None
    description: str = ""
    sampler: Mapping[str, Any] = field(default_factory=dict)
    sampler_stochastic: Mapping[str, Any] = field(default_factory=dict)
    network_kwargs: Mapping[str, Any] = field(default_factory=dict)
    precond_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def file_names(self) -> tuple[str, ...]:
        """The files this entry consists of (one for single-file entries)."""
        return self.files or (fetch.url_basename(self.url),)

    def file_url(self, file: str) -> str:
        """Download URL of one of the entry's files."""
        return self.url.rstrip("/") + "/" + file if self.files else self.url

    def local_path(self, *, root: Path | None = None) -> Path:
        """The cached file, or for a multi-file entry the cached directory."""
        d = fetch.entry_dir(self.name, root=root)
        return d if self.files else d / self.file_names()[0]


_ENTRIES: dict[str, CheckpointEntry] = {}
_DEFAULT_LOADED = False


def register_checkpoint(entry: CheckpointEntry) -> None:
    """Add an entry to the registry; a name already present is refused."""
    _ensure_default()
    if entry.name in _ENTRIES:
        raise ConfigError(f"checkpoint '{entry.name}' is already registered")
    _ENTRIES[entry.name] = entry


def _typed(name: str, table: Mapping[str, Any], key: str, types: type | tuple[type, ...]) -> Any:
    """table[key] if it has one of `types` (booleans never count as numbers), None if absent."""
    value = table.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
        raise ConfigError(f"checkpoint '{name}': '{key}' has the wrong type ({type(value).__name__})")
    return value


def parse_entry(name: str, table: Mapping[str, Any]) -> CheckpointEntry:
    """Validate one [checkpoint.NAME] table; unknown keys and missing fields are errors."""
    unknown = sorted(set(table) - ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"checkpoint '{name}': unknown keys {', '.join(unknown)}")
    for key in ("kind", "url", "format"):
        if not isinstance(table.get(key), str):
            raise ConfigError(f"checkpoint '{name}': '{key}' is required")
    if table["kind"] not in KINDS:
        raise UnknownNameError("checkpoint kind", table["kind"], KINDS)
    if table["format"] not in FORMATS:
        raise UnknownNameError("checkpoint format", table["format"], FORMATS)
    if not table["url"].startswith(("http://", "https://")):
        raise ConfigError(f"checkpoint '{name}': url must be http(s)")
    files = tuple(_typed(name, table, "files", list) or ())
    if any(not isinstance(f, str) or not f or f.startswith("/") or ".." in f.split("/") for f in files):
        raise ConfigError(f"checkpoint '{name}': files must be relative names")
    file_names = files or (fetch.url_basename(table["url"]),)
    hashes, sizes = table.get("sha256"), table.get("size")
    if isinstance(hashes, str):
        hashes = {file_names[0]: hashes}
    if isinstance(sizes, int) and not isinstance(sizes, bool):
        sizes = {file_names[0]: sizes}
    for label, mapping, typ in (("sha256", hashes, str), ("size", sizes, int)):
        if mapping is not None and (
            not isinstance(mapping, Mapping)
            or set(mapping) - set(file_names)
            or not all(isinstance(v, typ) for v in mapping.values())
        ):
            raise ConfigError(f"checkpoint '{name}': '{label}' must be a value or a table keyed by file name")
    if hashes and any(len(h) != 64 or set(h.lower()) - set("0123456789abcdef") for h in hashes.values()):
        raise ConfigError(f"checkpoint '{name}': sha256 must be 64 hex digits")
    prefix = _typed(name, table, "sha256_prefix", str)
    if prefix is not None and (not 0 < len(prefix) <= 64 or set(prefix.lower()) - set("0123456789abcdef")):
        raise ConfigError(f"checkpoint '{name}': sha256_prefix must be hex digits")
    if prefix is not None and len(file_names) != 1:
        raise ConfigError(f"checkpoint '{name}': sha256_prefix applies to single-file entries only")
    for key in ("sampler", "sampler_stochastic"):
        bad = sorted(set(_typed(name, table, key, dict) or {}) - SAMPLER_KEYS)
        if bad:
            raise ConfigError(f"checkpoint '{name}': unknown {key} keys {', '.join(bad)}")
    entry = CheckpointEntry(
        name=name,
        kind=table["kind"],
        url=table["url"],
        format=table["format"],
        files=files,
        precond=_typed(name, table, "precond", str),
        network=_typed(name, table, "network", str),
        architecture=_typed(name, table, "architecture", str),
        resolution=_typed(name, table, "resolution", int),
        channels=_typed(name, table, "channels", int),
        label_dim=_typed(name, table, "label_dim", int),
        fid_ref=_typed(name, table, "fid_ref", str),
        sha256={k: v.lower() for k, v in (hashes or {}).items()},
        sha256_prefix=prefix.lower() if prefix else None,
        size=dict(sizes or {}),
        approx_size_mb=_typed(name, table, "approx_size_mb", (int, float)),
        description=_typed(name, table, "description", str) or "",
        sampler=dict(table.get("sampler", {})),
        sampler_stochastic=dict(table.get("sampler_stochastic", {})),
        network_kwargs=dict(_typed(name, table, "network_kwargs", dict) or {}),
        precond_kwargs=dict(_typed(name, table, "precond_kwargs", dict) or {}),
    )
    if entry.kind == "model":
        for key in ("resolution", "channels", "label_dim"):
            if getattr(entry, key) is None:
                raise ConfigError(f"checkpoint '{name}': model entries need '{key}'")
        if entry.format == "state-dict" and not (entry.network and entry.precond):
            raise ConfigError(f"checkpoint '{name}': state-dict entries need 'network' and 'precond'")
    elif entry.kind == "fid-stats" and entry.format != "fid-stats-npz":
        raise ConfigError(f"checkpoint '{name}': fid-stats entries have format 'fid-stats-npz'")
    elif entry.kind == "extractor-weights" and entry.format != "state-dict":
        raise ConfigError(f"checkpoint '{name}': extractor-weights entries have format 'state-dict'")
    return entry


def read_registry(text: str, *, source: str = "checkpoints.toml") -> list[CheckpointEntry]:
    """Parse a registry file's text into entries, checking that fid_ref names a fid-stats entry."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    unknown = sorted(set(data) - {"schema", "checkpoint"})
    if unknown or data.get("schema", 1) != 1:
        raise ConfigError(f"{source}: expected 'schema = 1' and [checkpoint.NAME] tables")
    entries = [parse_entry(name, table) for name, table in data.get("checkpoint", {}).items()]
    stats = {e.name for e in entries if e.kind == "fid-stats"}
    for e in entries:
        if e.fid_ref is not None and e.fid_ref not in stats:
            raise ConfigError(
                f"{source}: checkpoint '{e.name}' has fid_ref '{e.fid_ref}', which is not a fid-stats entry"
            )
    return entries


def _ensure_default() -> None:
    """Load the packaged checkpoints.toml into the registry once."""
    global _DEFAULT_LOADED
    if _DEFAULT_LOADED:
        return
    _DEFAULT_LOADED = True
    text = resources.files("diffbench").joinpath("checkpoints.toml").read_text(encoding="utf-8")
    for entry in read_registry(text, source="diffbench/checkpoints.toml"):
        _ENTRIES[entry.name] = entry


def entries() -> dict[str, CheckpointEntry]:
    """All registered checkpoints by name (a copy)."""
    _ensure_default()
    return dict(_ENTRIES)


def get_entry(name: str) -> CheckpointEntry:
    """The entry called `name`; an unknown name raises with the closest names suggested."""
    _ensure_default()
    if name not in _ENTRIES:
        raise UnknownNameError("checkpoint", name, _ENTRIES)
    return _ENTRIES[name]


# --- fetching ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """A verified local copy of an entry: its path (file or directory), sha256 and per-file results."""

    path: Path
    sha256: str
    results: tuple[fetch.FetchResult, ...]

    @property
    def recorded(self) -> tuple[str, ...]:
        """Files whose hash this fetch recorded in the lock file (no published hash)."""
        return tuple(r.path.name for r in self.results if r.recorded)

    @property
    def checked_against(self) -> str:
        """The weakest check over the files: 'recorded now' < 'lock file' < 'published'."""
        order = ("recorded now", "lock file", "published")
        return min((r.checked_against for r in self.results), key=order.index)


def combined_sha256(pairs: list[tuple[str, str]]) -> str:
    """One hash for a set of files: sha256 over sorted 'relative-path sha256' lines."""
    return hashlib.sha256("".join(f"{p} {h}\n" for p, h in sorted(pairs)).encode()).hexdigest()


def fetch_entry(
    entry: CheckpointEntry | str,
    *,
    offline: bool = False,
    progress: Progress | None = None,
    retries: int = 2,
    root: Path | None = None,
) -> Fetched:
    """Download (or find in the cache) every file of an entry and verify each one's sha256."""
    from diffbench.models.validate import check_for_file

    entry = get_entry(entry) if isinstance(entry, str) else entry
    root = root or fetch.cache_dir()
    results = []
    for file in entry.file_names():
        dest = fetch.entry_dir(entry.name, root=root) / file
        results.append(
            fetch.download(
                entry.file_url(file),
                dest,
                sha256=entry.sha256.get(file),
                size=entry.size.get(file),
                offline=offline,
                retries=retries,
                progress=progress,
                root=root,
                check=check_for_file(file, None if entry.files else entry.format),
                prefix=entry.sha256_prefix,
                hint=_BY_HAND[entry.kind],
            )
        )
    if entry.files:
        digest = combined_sha256([(f, r.sha256) for f, r in zip(entry.file_names(), results, strict=True)])
    else:
        digest = results[0].sha256
    return Fetched(entry.local_path(root=root), digest, tuple(results))


# what `fetch` adds when a host cannot be reached: the by-hand placement is said by fetch.download itself
_BY_HAND = {
    "model": "; or pass the file's local path as MODEL (a path works wherever a registry name does)",
    "fid-stats": "; or pass the file's local path to --ref",
    "extractor-weights": "; or pass the file with --inception-weights PATH",
}


def fetch_file(spec: str, *, offline: bool = False, progress: Progress | None = None) -> tuple[Path, str]:
    """(verified local path, sha256) of a registry name of any kind (e.g. FID statistics), URL or path.

    A URL's file is format-checked by its name's suffix (.npz statistics, .pkl EDM pickle, .pt/.pth/.bin
    state dict, .safetensors) before it is cached and pinned.
    """
    from diffbench.models.validate import check_for_file

    spec = str(spec)
    if spec.startswith(("http://", "https://")):
        dest = fetch.url_dest(spec)
        res = fetch.download(spec, dest, offline=offline, progress=progress, check=check_for_file(dest.name))
        return res.path, res.sha256
    _ensure_default()
    if spec in _ENTRIES:
        got = fetch_entry(_ENTRIES[spec], offline=offline, progress=progress)
        return got.path, got.sha256
    path = Path(spec).expanduser()
    if path.exists():
        return path, local_sha256(path)
    if _looks_like_path(spec) or Path(spec).suffix:
        raise ModelLoadError(f"no such file or directory: {spec}")
    raise UnknownNameError("checkpoint", spec, _ENTRIES)


def resolve_reference(spec: str | os.PathLike, *, offline: bool = False, progress: Progress | None = None) -> Path:
    """The verified local path of FID reference statistics named by `spec`.

    `spec` is a registry name of kind fid-stats (e.g. 'fid-cifar10-32x32': fetched into the cache on first
    use, format-checked, sha256 verified against the published or pinned hash), an http(s) URL (same, cached
    under urls/), or a local path (returned as it is; a missing one is one line). Raises ModelLoadError or
    UnknownNameError (with the closest fid-stats names) otherwise.
    """
    text = os.fspath(spec)
    _ensure_default()
    if text in _ENTRIES:
        entry = _ENTRIES[text]
        if entry.kind != "fid-stats":
            raise ModelLoadError(f"'{text}' is a {entry.kind} entry, not FID reference statistics")
        return fetch_entry(entry, offline=offline, progress=progress).path
    if text.startswith(("http://", "https://")):
        return fetch_file(text, offline=offline, progress=progress)[0]
    path = Path(text).expanduser()
    if path.exists():
        return path
    if _looks_like_path(text) or path.suffix:
        raise ModelLoadError(f"no such file: {text}")
    raise UnknownNameError("reference statistics", text, [n for n, e in _ENTRIES.items() if e.kind == "fid-stats"])


def reference_for_model(spec: str) -> str | None:
    """The registry name of the FID reference statistics a registry model is scored against (its `fid_ref`).

    None when `spec` is not a registry model or its entry names no statistics (paths, URLs, built-ins).
    """
    _ensure_default()
    entry = _ENTRIES.get(str(spec))
    return entry.fid_ref if entry is not None and entry.kind == "model" else None


INCEPTION_ENTRY = "inception-v3-compat"


def find_inception_weights(*, root: Path | None = None) -> Path | None:
    """torch-fidelity's Inception-v3 weights if a copy is on disk, else None (nothing is downloaded).

    Looks in the registry cache first (<cache>/checkpoints/inception-v3-compat/<file>, where
    `diffbench checkpoints fetch inception-v3-compat` puts it), then where torch-fidelity itself keeps it
    ($TORCH_HOME/hub/checkpoints/<file>).
    """
    for path in inception_weights_places(root=root):
        if path.is_file():
            return path
    return None


def inception_weights_places(*, root: Path | None = None) -> list[Path]:
    """Where find_inception_weights looks, in order: the registry cache, then torch hub's checkpoint folder."""
    entry = get_entry(INCEPTION_ENTRY)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "hub"):  # torch's own answer (honours torch.hub.set_dir)
        hub = Path(torch.hub.get_dir())
    else:  # the same rule without importing torch: $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        hub = Path(os.environ.get("TORCH_HOME") or os.path.join(base, "torch")).expanduser() / "hub"
    return [entry.local_path(root=root), hub / "checkpoints" / entry.file_names()[0]]


@dataclass(frozen=True)
class FileStatus:
    """Outcome of verifying one cached file: ok, unpinned, missing, partial or mismatch."""

    entry: str
    file: str
    status: str
    detail: str = ""


def verify_entry(entry: CheckpointEntry | str, *, root: Path | None = None) -> list[FileStatus]:
    """Re-hash an entry's cached files against the published or locked hash; mismatches go to quarantine."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    root = root or fetch.cache_dir()
    out = []
    for file in entry.file_names():
        path = fetch.entry_dir(entry.name, root=root) / file
        url = entry.file_url(file)
        if not path.exists():
            part = path.with_name(path.name + ".part")
            status = "partial" if part.exists() else "missing"
            out.append(FileStatus(entry.name, file, status, f"{part.stat().st_size} bytes" if part.exists() else ""))
            continue
        sha, size, locked = fetch.expected_for(url, sha256=entry.sha256.get(file), size=entry.size.get(file), root=root)
        try:
            digest, _ = fetch.check_file(path, url=url, sha256=sha, size=size, root=root, prefix=entry.sha256_prefix)
        except ModelLoadError as exc:
            out.append(FileStatus(entry.name, file, "mismatch", str(exc)))
            continue
        if sha is None:
            out.append(FileStatus(entry.name, file, "unpinned", f"sha256 {digest} (no published or locked hash)"))
        else:
            out.append(FileStatus(entry.name, file, "ok", f"sha256 {digest}" + (" (lock file)" if locked else "")))
    return out


@dataclass(frozen=True)
class Pinned:
    """One file `forget` acts on: its URL, the lock-file record (None if unpinned) and its cached path."""

    url: str
    record: dict | None
    path: Path

    @property
    def cached(self) -> bool:
        return self.path.exists() or self.path.with_name(self.path.name + ".part").exists()


def pinned_files(spec: str, *, root: Path | None = None) -> list[Pinned]:
    """The files of a registry name or URL, with their lock-file records and cache paths (nothing changed)."""
    root = root or fetch.cache_dir()
    if spec.startswith(("http://", "https://")):
        _ensure_default()  # a registry file's URL means that entry's cached file
        owner = [(e, f) for e in _ENTRIES.values() for f in e.file_names() if e.file_url(f) == spec]
        where = fetch.entry_dir(owner[0][0].name, root=root) / owner[0][1] if owner else fetch.url_dest(spec, root=root)
        pairs = [(spec, where)]
    else:
        entry = get_entry(spec)
        pairs = [(entry.file_url(f), fetch.entry_dir(entry.name, root=root) / f) for f in entry.file_names()]
    records = fetch.read_lock(root=root, strict=False)
    return [Pinned(url, records.get(url), path) for url, path in pairs]


def forget(spec: str, *, root: Path | None = None) -> list[tuple[Pinned, Path | None]]:
    """Drop the pinned hashes of a registry name or URL and move its cached files to quarantine.

    Returns (file, where its cached copy went or None) for every file that had a record or a cached copy.
    The next fetch downloads afresh and pins what it verifies.
    """
    root = root or fetch.cache_dir()
    done = []
    for item in pinned_files(spec, root=root):
        if item.record is None and not item.cached:
            continue
        with fetch.exclusive(str(item.path.resolve()), root=root):
            fetch.forget(item.url, root=root)
            moved = None
            for p in (item.path, item.path.with_name(item.path.name + ".part")):
                if p.exists():
                    moved = fetch.quarantine(p, root=root)
        done.append((item, moved))
    return done


# --- loading -----------------------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """edm-pickle, diffusers or state-dict, from the file's first bytes; anything else is an error."""
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "unet" / "config.json").is_file():
            return "diffusers"
        raise ModelLoadError(f"{path} is a directory but not a diffusers model (no config.json)")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not head:
        raise ModelLoadError(f"{path} is empty")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ModelLoadError(f"{path} is truncated or corrupt ({exc})") from None
        if any(n.endswith("data.pkl") for n in names):
            return "state-dict"
        if names and all(n.endswith(".npy") for n in names):
            raise ModelLoadError(f"{path} is a NumPy .npz archive (FID statistics?), not a model")
        raise ModelLoadError(f"{path} is a zip archive but not a torch checkpoint")
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "state-dict"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 27):
        return "state-dict"  # safetensors: 8-byte little-endian header length, then a JSON header
    if head[0] == 0x80:  # a pickle (protocol 2+): EDM's release format
        return "edm-pickle"
    raise ModelLoadError(
        f"{path} is not a checkpoint: expected an EDM .pkl, a torch state dict, a .safetensors "
        "file or a diffusers directory"
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def load_path(
    path: Path, *, fmt: str | None = None, entry: CheckpointEntry | None = None, device: str = "cpu"
) -> tuple[Any, str]:
    """Load a local file or directory in the given (or detected) format; returns (model, format)."""
    fmt = fmt or detect_format(path)
    if fmt == "fid-stats-npz":
        raise ModelLoadError(f"{path.name} holds FID reference statistics, not a model")
    try:
        if fmt == "edm-pickle":
            try:
                from diffbench.models.edm_pickle import load_edm_pickle
            except ModuleNotFoundError as exc:
                if exc.name != "diffbench.models.edm_pickle":
                    raise
                raise ModelLoadError(
                    "EDM pickle support (diffbench.models.edm_pickle) is missing from this build"
                ) from None
            model = load_edm_pickle(path, device=device)
        elif fmt == "diffusers":
            from diffbench.models.diffusers_unet import load_diffusers

            model = load_diffusers(path, device=device)
        elif fmt == "state-dict":
            from diffbench.models.statedict import load_state_dict_checkpoint

            spec = None
            if entry is not None:
                spec = {
                    "network": entry.network,
                    "network_kwargs": dict(entry.network_kwargs),
                    "precond": entry.precond,
                    "precond_kwargs": dict(entry.precond_kwargs),
                }
            model = load_state_dict_checkpoint(path, spec=spec, device=device)
        else:
            raise UnknownNameError("checkpoint format", fmt, FORMATS)
    except DiffbenchError:
        raise
    except MemoryError:
        raise
    except ImportError as exc:
        raise MissingDependencyError(f"loading {path.name} needs a missing package: {_one_line(exc)}") from None
    except Exception as exc:  # pickle/zip/torch errors of a truncated or foreign file
        raise ModelLoadError(f"cannot load {path.name} as {fmt}: {_one_line(exc)}") from None
    if hasattr(model, "eval"):
        model.eval()
    return model, fmt


def local_sha256(path: Path) -> str:
    """sha256 of a file, or the combined hash of the files under a directory."""
    if path.is_file():
        return fetch.sha256_file(path)
    pairs = [
        (p.relative_to(path).as_posix(), fetch.sha256_file(p))
        for p in sorted(path.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    ]
    return combined_sha256(pairs)


def _check_against_entry(model: Any, entry: CheckpointEntry) -> None:
    """A file that does not match its registry entry's image shape or label count is refused."""
    for attr, want in (
        ("img_resolution", entry.resolution),
        ("img_channels", entry.channels),
        ("label_dim", entry.label_dim),
    ):
        have = getattr(model, attr, None)
        if want is not None and have is not None and int(have) != int(want):
            raise ModelLoadError(f"{entry.name}: the file has {attr} {have}, the registry says {want}")


def _attach(model: Any, info: dict[str, Any]) -> Any:
    try:
        model.source_info = info
    except (AttributeError, TypeError):
        pass
    return model


def _looks_like_path(spec: str) -> bool:
    return (
        os.sep in spec
        or "/" in spec
        or spec.startswith((".", "~"))
        or Path(spec).suffix.lower() in (".pkl", ".pt", ".pth", ".bin", ".safetensors", ".ckpt")
    )


def _load_cached(path: Path, spec: str, checked_against: str, **kw: Any) -> tuple[Any, str]:
    """load_path for a file from the cache; when it fails and its hash was only pinned on first download
    (not published), say how to drop the cached copy and its pinned hash."""
    try:
        return load_path(path, **kw)
    except ModelLoadError as exc:
        if checked_against == "published":
            raise
        raise ModelLoadError(
            f"{exc} [cached copy of {spec}: `diffbench checkpoints forget {spec}` discards it and its pinned "
            "hash, then fetch it again]"
        ) from None


def load_checkpoint(spec: str, *, device: str = "cpu", offline: bool = False, progress: Progress | None = None) -> Any:
    """Resolve a registry name, local path, http(s) URL or module:factory entry point to a Denoiser."""
    spec = str(spec)
    if spec.startswith(("http://", "https://")):
        from diffbench.models.validate import check_any_model

        res = fetch.download(
            spec,
            fetch.url_dest(spec),
            offline=offline,
            progress=progress,
            check=check_any_model,
            hint=_BY_HAND["model"],
        )
        model, fmt = _load_cached(res.path, spec, res.checked_against, device=device)
        info = {
            "spec": spec,
            "url": spec,
            "path": str(res.path),
            "sha256": res.sha256,
            "format": fmt,
            "checked_against": res.checked_against,
        }
        return _attach(model, info)
    _ensure_default()
    if spec in _ENTRIES:
        entry = _ENTRIES[spec]
        if entry.kind != "model":
            what = "FID reference statistics" if entry.kind == "fid-stats" else "feature-extractor weights"
            raise ModelLoadError(f"'{spec}' holds {what}, not a model")
        got = fetch_entry(entry, offline=offline, progress=progress)
        model, fmt = _load_cached(got.path, spec, got.checked_against, fmt=entry.format, entry=entry, device=device)
        _check_against_entry(model, entry)
        info = {
            "spec": spec,
            "name": spec,
            "url": entry.url,
            "path": str(got.path),
            "sha256": got.sha256,
            "format": fmt,
            "checked_against": got.checked_against,
        }
        return _attach(model, info)
    path = Path(spec).expanduser()
    if path.exists():
        model, fmt = load_path(path, device=device)
        info = {
            "spec": spec,
            "path": str(path.resolve()),
            "sha256": local_sha256(path),
            "format": fmt,
            "checked_against": "none (local file)",
        }
        return _attach(model, info)
    from diffbench.models.entrypoint import is_entry_point, load_entry_point

    if is_entry_point(spec):
        model = load_entry_point(spec, device=device)
        return _attach(model, {"spec": spec, "entry_point": spec, "sha256": None, "format": "entry-point"})
    if _looks_like_path(spec):
        raise ModelLoadError(f"no such file or directory: {spec}")
    raise UnknownNameError("checkpoint", spec, [n for n, e in _ENTRIES.items() if e.kind == "model"])
