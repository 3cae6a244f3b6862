"""Read EDM's network pickles without executing anything in them, and write random-weight ones for tests.

An EDM pickle (Karras et al. 2022, NVlabs/edm; REFERENCE §2) is a plain pickle of a dict whose 'ema'
entry is a network saved by `torch_utils.persistence`: each object is reduced to
`_reconstruct_persistent_obj(meta)`, where meta carries the full source of its defining module (which
unpickling the usual way exec()s), the class name and the object's __dict__, including the exact
constructor arguments. Here a restricted unpickler resolves only the globals that format needs; the
persistent-object hook only records (class name, state); the network is rebuilt from the recorded
arguments with diffbench's own implementation (diffbench.models.nets) and the recorded parameters and
buffers are loaded with strict=True.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import os
import pickle
import struct
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from diffbench.errors import ConfigError, ModelLoadError, UnknownNameError
from diffbench.models import precond as P
from diffbench.models.nets import NETWORKS, build_network, network_arguments
from diffbench.models.statedict import describe_mismatch, key_list

PERSISTENT_HOOK = ("torch_utils.persistence", "_reconstruct_persistent_obj")
PERSISTENCE_VERSION = 6
NO_SOURCE = "# written by diffbench: no source\n"


class PickleSecurityError(ModelLoadError):
    """A pickle that names a global outside the EDM allow-list; nothing from it was run."""


@dataclass
class PersistentRecord:
    """What `_reconstruct_persistent_obj(meta)` would have rebuilt: class name and __dict__ (never exec'd)."""

    class_name: str
    state: dict
    version: int = PERSISTENCE_VERSION
    source_chars: int = 0  # length of the embedded module source, kept only as a fact

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})


class ModuleDictRecord:
    """Stand-in for torch.nn.ModuleDict during unpickling: keeps the state, builds nothing."""

    state: dict

    def __new__(cls, *args: Any):
        obj = super().__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise ModelLoadError("a ModuleDict in the EDM pickle has a malformed state")
        self.state = state


@dataclass
class _Persistent:
    """Writer side: pickles as `torch_utils.persistence._reconstruct_persistent_obj(meta)`, EDM's layout."""

    class_name: str
    state: dict
    module_src: str = NO_SOURCE

    def __reduce__(self):
        meta = dict(
            type="class",
            version=PERSISTENCE_VERSION,
            module_src=self.module_src,
            class_name=self.class_name,
            state=self.state,
        )
        return (_HOOK, (meta,))


class _PersistentHookName:
    """Placeholder the writer emits as the global torch_utils.persistence._reconstruct_persistent_obj."""

    def __call__(self, meta):  # never called: only its name is written
        raise RuntimeError("placeholder")


_HOOK = _PersistentHookName()


# --------------------------------------------------------------------------------------- reading


def _record_persistent(meta: Any) -> PersistentRecord:
    """The allow-listed replacement of EDM's hook: validate meta and record it; the source is never run."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise ModelLoadError("EDM pickle holds a persistent object with malformed metadata")
    if meta.get("version") != PERSISTENCE_VERSION:
        raise ModelLoadError(
            f"EDM pickle persistence version {meta.get('version')!r} is not {PERSISTENCE_VERSION}, the only one known"
        )
    name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(name, str) or not isinstance(state, dict):
        raise ModelLoadError("EDM pickle holds a persistent object without class name or state")
    src = meta.get("module_src")
    return PersistentRecord(class_name=name, state=state, source_chars=len(src) if isinstance(src, str) else 0)


def _load_storage(data: Any):
    """torch.storage._load_from_bytes, but the nested torch.load runs with weights_only=True."""
    if not isinstance(data, bytes | bytearray):
        raise ModelLoadError("EDM pickle passes a non-bytes object to torch.storage._load_from_bytes")
    try:
        with warnings.catch_warnings():  # TypedStorage deprecation notes are torch's, not the user's
            warnings.simplefilter("ignore", UserWarning)
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PickleSecurityError(
            f"EDM pickle holds a tensor storage that a weights-only load refuses: {str(e).splitlines()[0]}"
        ) from None
    except Exception as e:  # noqa: BLE001 - any failure of the nested load is a bad file
        raise ModelLoadError(f"EDM pickle holds an unreadable tensor storage: {type(e).__name__}") from None
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise ModelLoadError("EDM pickle's nested storage bytes do not hold a tensor storage")
    return storage


# the largest tensor extent, storage offset or dimension count a file may ask for; EDM's largest released
# network (ADM ImageNet-64, ~296M parameters) is far below these
MAX_ELEMENTS = 1 << 40
MAX_DIMS = 16


def _ints(v: Any) -> bool:
    return (
        isinstance(v, tuple | list | torch.Size)
        and len(v) <= MAX_DIMS
        and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_ELEMENTS for i in v)
    )


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 with its arguments checked first: a view that fits its storage, no hooks."""
    if not isinstance(storage, torch.TypedStorage):
        raise ModelLoadError("EDM pickle rebuilds a tensor from something that is not a typed storage")
    if not (
        isinstance(storage_offset, int)
        and not isinstance(storage_offset, bool)
        and 0 <= storage_offset < MAX_ELEMENTS
        and _ints(size)
        and _ints(stride)
        and len(size) == len(stride)
    ):
        raise ModelLoadError("EDM pickle rebuilds a tensor with a malformed offset, size or stride")
    if backward_hooks:
        raise PickleSecurityError("EDM pickle attaches backward hooks to a tensor")
    if metadata:
        raise PickleSecurityError("EDM pickle attaches metadata to a tensor, which the format never does")
    # the last element the view reaches must lie inside the storage (elements, not bytes)
    if all(n > 0 for n in size):
        with warnings.catch_warnings():  # TypedStorage deprecation notes are torch's, not the user's
            warnings.simplefilter("ignore", UserWarning)
            elements = storage._size()
        last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride))
        if last >= elements:
            raise ModelLoadError(
                f"EDM pickle holds a tensor of size {list(size)} that reaches element {last} of a storage "
                f"of {elements} elements"
            )
    try:
        return torch._utils._rebuild_tensor_v2(
            storage, storage_offset, tuple(size), tuple(stride), bool(requires_grad), OrderedDict()
        )
    except RuntimeError as e:
        raise ModelLoadError(f"EDM pickle holds a tensor that does not fit its storage: {e}") from None


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None):
    """torch._utils._rebuild_parameter for a plain tensor and no hooks."""
    if not isinstance(data, torch.Tensor):
        raise ModelLoadError("EDM pickle makes a parameter from something that is not a tensor")
    if backward_hooks:
        raise PickleSecurityError("EDM pickle attaches backward hooks to a parameter")
    return nn.Parameter(data, requires_grad=bool(requires_grad))


# The only numpy dtypes an EDM pickle holds: scalars of plain numbers (hyperparameters that passed through
# numpy). Each is fixed-size with no fields, no sub-array and no objects; its layout is numpy's, never the
# file's. Structured, void, object, string, datetime and sub-array dtypes are refused.
PLAIN_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})


def _numpy_dtype(obj, align=False, copy=False):
    """numpy.dtype for the plain numeric names in PLAIN_DTYPES only; the dtype is numpy's canonical one."""
    if not isinstance(obj, str) or obj not in PLAIN_DTYPES:
        raise PickleSecurityError(
            f"refusing EDM pickle: it asks for the numpy dtype {obj!r}; only plain numbers "
            f"({', '.join(sorted(PLAIN_DTYPES))}) are allowed; nothing in the file was run"
        )
    if align is not False or copy not in (False, True):
        raise PickleSecurityError(f"refusing EDM pickle: numpy dtype {obj!r} with unusual flags")
    return np.dtype(obj)


def _build_dtype(dtype: np.dtype, state: Any) -> None:
    """BUILD on a numpy dtype: accepted only when the state is exactly the one numpy writes for that dtype.

    numpy's own __setstate__ is never called (the state could place fields at arbitrary offsets), so the
    dtype stays numpy's canonical one.
    """
    canonical = dtype.__reduce__()[2]
    if dtype.str.lstrip("<>|=") not in PLAIN_DTYPES or type(state) is not tuple or state != canonical:
        raise PickleSecurityError(
            f"refusing EDM pickle: it gives the numpy dtype '{dtype.str}' a layout of its own "
            "(structured, sub-array or foreign byte order), which the format never does; nothing was read"
        )


def _plain_dtype(dtype: Any) -> np.dtype:
    if isinstance(dtype, np.dtype) and dtype.str.lstrip("<>|=") in PLAIN_DTYPES and dtype.isnative:
        return dtype
    raise PickleSecurityError("EDM pickle holds a numpy scalar whose dtype is not a plain number")


def _numpy_scalar(dtype, data=None):
    """numpy.core.multiarray.scalar for plain dtypes: the value read from exactly itemsize raw bytes."""
    dt = _plain_dtype(dtype)
    if not isinstance(data, bytes):
        raise PickleSecurityError("EDM pickle holds a numpy scalar that is not a plain number")
    if len(data) != dt.itemsize:
        raise ModelLoadError("EDM pickle holds a numpy scalar of the wrong size")
    return np.frombuffer(data, dtype=dt)[0].copy()


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """_codecs.encode as protocol 2 uses it for bytes objects: encode(str, 'latin1') only."""
    if not isinstance(text, str) or encoding != "latin1" or errors != "strict":
        raise PickleSecurityError("refusing EDM pickle: _codecs.encode is allowed only as protocol 2's latin1 bytes")
    return text.encode("latin1")


def _set(items: Any = ()) -> set:
    """builtins.set for a list of plain strings (a module's _non_persistent_buffers_set)."""
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ModelLoadError("EDM pickle builds a set of something other than names")
    return set(items)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    PERSISTENT_HOOK: _record_persistent,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    # protocol 3 files spell a module's empty _non_persistent_buffers_set as set([])
    ("builtins", "set"): _set,
    # protocol 2 files spell bytes as _codecs.encode(str, 'latin1')
    ("_codecs", "encode"): _codecs_encode,
}


def _checked_build(self) -> None:
    """BUILD only where the EDM format uses it (ModuleDict state, a numpy dtype's canonical state)."""
    state = self.stack[-1] if self.stack else None
    target = self.stack[-2] if len(self.stack) >= 2 else None
    if isinstance(target, np.dtype):
        self.stack.pop()
        _build_dtype(target, state)
        return
    if not isinstance(target, ModuleDictRecord):
        raise PickleSecurityError(
            f"refusing EDM pickle: it sets the state of a {type(target).__name__}, which the "
            "format never does; nothing in the file was run"
        )
    _BUILD(self)


def _refuse_extension(self) -> None:
    raise PickleSecurityError(
        "refusing EDM pickle: it uses a copyreg extension code (EXT1/EXT2/EXT4), which the format "
        "never does; nothing in the file was run"
    )


_BUILD = pickle._Unpickler.dispatch[pickle.BUILD[0]]


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves only ALLOWED_GLOBALS, each to diffbench's own safe function; refuses everything else."""

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _checked_build
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_extension
    del _op

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if isinstance(module, str) and isinstance(name, str) and self.proto < 3:
            # Python 2 spellings (__builtin__.set, ...) map to the same allow-list, as pickle's fix_imports does
            key = _compat_pickle.NAME_MAPPING.get(key, (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        try:
            found = ALLOWED_GLOBALS[key]
        except (KeyError, TypeError):
            found = None
        if found is None:
            raise PickleSecurityError(
                f"refusing EDM pickle: it names the global '{module}.{name}', which is "
                f"not on the allow-list; nothing in the file was run"
            ) from None
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise ModelLoadError("EDM pickle uses persistent ids, which the EDM format never does (torch.save file?)")


def _describe_start(head: bytes) -> str:
    if head.startswith(b"PK"):
        return "a zip archive (torch.save or safetensors-style checkpoint?)"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    if head[:1] in (b"{", b"[", b"#") or all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return f"a file starting with {head[:8]!r}"


def read_edm_pickle(path: str | os.PathLike) -> dict:
    """The recorded structure of an EDM pickle: top-level dict, networks as PersistentRecord (nothing run)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if not head.startswith(b"\x80") or len(head) < 2 or head[1] < 2:
                raise ModelLoadError(f"{path} is not an EDM pickle: it is {_describe_start(head)}")
            f.seek(0)
            data = _RestrictedUnpickler(f).load()
    except ModelLoadError:
        raise
    except IsADirectoryError:
        raise ModelLoadError(f"{path} is a directory, not an EDM pickle") from None
    except OSError as e:
        raise ModelLoadError(f"cannot read EDM pickle {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - a malformed stream can fail in any way; each is a bad file
        truncated = isinstance(e, EOFError | struct.error) or any(w in str(e) for w in ("truncated", "exhausted"))
        detail = (
            "the file ends early (a truncated download?); delete it and download it again (for a cached "
            "checkpoint: diffbench checkpoints forget NAME, then fetch it)"
            if truncated
            else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'malformed data'}"
        )
        raise ModelLoadError(f"{path} is not a readable EDM pickle: {detail}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not an EDM pickle: it holds a {type(data).__name__}, not a dict")
    return data


# --------------------------------------------------------------------------------------- building


@dataclass(frozen=True)
class _PrecondSpec:
    cls: type
    constants: tuple[str, ...]  # recorded arguments after (img_resolution, img_channels, label_dim, use_fp16)


PRECONDS: dict[str, _PrecondSpec] = {
    "VPPrecond": _PrecondSpec(P.VPPrecond, ("beta_d", "beta_min", "M", "epsilon_t")),
    "VEPrecond": _PrecondSpec(P.VEPrecond, ("sigma_min", "sigma_max")),
    "iDDPMPrecond": _PrecondSpec(P.IDDPMPrecond, ("C_1", "C_2", "M")),
    "EDMPrecond": _PrecondSpec(P.EDMPrecond, ("sigma_min", "sigma_max", "sigma_data")),
}
_PRECOND_COMMON = ("img_resolution", "img_channels", "label_dim", "use_fp16")


def _plain(v: Any) -> Any:
    """Recorded arguments as plain Python values (numpy scalars to float/int, tuples to lists)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list | tuple):
        return [_plain(i) for i in v]
    if isinstance(v, dict):
        return {str(k): _plain(i) for k, i in v.items()}
    return v


def _named_arguments(record: PersistentRecord, order: tuple[str, ...], what: str) -> dict:
    """Recorded positional and keyword constructor arguments, merged into one dict of names."""
    if record.state.get("_init_kwargs") is None and record.state.get("_init_args") is None:
        raise ModelLoadError(f"EDM pickle's {what} {record.class_name} has no recorded constructor arguments")
    args, kwargs = record.init_args, record.init_kwargs
    if len(args) > len(order):
        raise ModelLoadError(
            f"EDM pickle's {what} {record.class_name} records {len(args)} positional "
            f"arguments; at most {len(order)} are known"
        )
    named = dict(zip(order, args, strict=False))
    clash = sorted(set(named) & set(kwargs))
    if clash:
        raise ModelLoadError(f"EDM pickle's {what} {record.class_name} gives {', '.join(clash)} twice")
    named.update(kwargs)
    return _plain(named)


def _children(state: dict) -> dict:
    modules = state.get("_modules") or {}
    if not isinstance(modules, dict):
        raise ModelLoadError("EDM pickle holds a module whose _modules is not a dict")
    return modules


def _collect_tensors(node: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Flatten recorded parameters and persistent buffers into state-dict keys (module.sub.name)."""
    if not isinstance(node, PersistentRecord | ModuleDictRecord) or not isinstance(node.state, dict):
        raise ModelLoadError(f"EDM pickle holds a {type(node).__name__} at '{prefix.rstrip('.')}', not a module")
    state = node.state
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        tensors = state.get(group) or {}
        if not isinstance(tensors, dict):
            raise ModelLoadError(f"EDM pickle holds a malformed {group} at '{prefix.rstrip('.')}'")
        for name, t in tensors.items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise ModelLoadError(f"EDM pickle's {prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t.detach()
    for name, child in _children(state).items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{name}.", out)


def load_recorded_state(net: nn.Module, state: dict[str, torch.Tensor], *, what: str) -> None:
    """Load a recorded state dict with strict=True, naming missing, unexpected and mis-shaped keys."""
    problem = describe_mismatch(net.state_dict(), state)
    if problem:
        raise ModelLoadError(f"{what}: the recorded weights do not fit the recorded architecture: {problem}")
    net.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}, strict=True)


def _network_from_record(record: PersistentRecord, *, what: str) -> tuple[nn.Module, dict]:
    if not isinstance(record.class_name, str) or not isinstance(record.state, dict):
        raise ModelLoadError(f"{what}: the inner network record is malformed")
    if record.class_name not in NETWORKS:
        raise ModelLoadError(
            f"{what}: network class '{record.class_name}' is not supported (supported: {', '.join(sorted(NETWORKS))})"
        )
    kwargs = _named_arguments(record, network_arguments(record.class_name), "network")
    try:
        net = build_network(record.class_name, kwargs)
    except (ConfigError, UnknownNameError) as e:
        raise ModelLoadError(f"{what}: {e}") from None
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(record, "", tensors)
    load_recorded_state(net, tensors, what=what)
    return net, kwargs


def _float_or_none(state: dict, name: str) -> float | None:
    v = state.get(name)
    return float(v) if isinstance(v, int | float | np.generic) and not isinstance(v, bool) else None


def build_denoiser(record: PersistentRecord, *, what: str = "EDM pickle") -> nn.Module:
    """diffbench's preconditioned network from a recorded EDM precond object (EDM Table 1), weights loaded."""
    if (
        not isinstance(record, PersistentRecord)
        or not isinstance(record.class_name, str)
        or not isinstance(record.state, dict)
    ):
        raise ModelLoadError(f"{what} is a {type(record).__name__}, not a network saved by EDM")
    if record.class_name not in PRECONDS:
        kind = "a bare network" if record.class_name in NETWORKS else "an unsupported class"
        raise ModelLoadError(
            f"{what} holds {kind} '{record.class_name}', not one of the preconditioned networks {', '.join(PRECONDS)}"
        )
    spec = PRECONDS[record.class_name]
    pkw = _named_arguments(record, _PRECOND_COMMON + spec.constants + ("model_type",), "preconditioning")
    children = _children(record.state)
    if not isinstance(children.get("model"), PersistentRecord):
        raise ModelLoadError(f"{what}: {record.class_name} has no recorded inner network 'model'")
    net, net_kwargs = _network_from_record(children["model"], what=what)
    for need in ("img_resolution", "img_channels"):
        if need not in pkw:
            raise ModelLoadError(f"{what}: {record.class_name} does not record {need}")
    own = {k: pkw[k] for k in spec.constants if k in pkw}
    wrapper = spec.cls(
        net,
        img_resolution=pkw["img_resolution"],
        img_channels=pkw["img_channels"],
        label_dim=pkw.get("label_dim", 0),
        use_fp16=bool(pkw.get("use_fp16", False)),
        **own,
    )
    _adopt_recorded_buffers(wrapper, record, what=what)
    wrapper.source_info = {
        "format": "edm-pickle",
        "precond": record.class_name,
        "network": children["model"].class_name,
        "init_kwargs": pkw,
        "network_kwargs": net_kwargs,
    }
    return wrapper


def _adopt_recorded_buffers(wrapper: nn.Module, record: PersistentRecord, *, what: str) -> None:
    """Adopt the recorded precond buffers and range (iDDPM's u table), so rounding matches the file."""
    buffers = record.state.get("_buffers") or {}
    extra = sorted(k for k, v in buffers.items() if v is not None and not hasattr(wrapper, k))
    if extra:
        raise ModelLoadError(f"{what}: {record.class_name} records unknown buffers {key_list(extra)}")
    for name, t in buffers.items():
        if t is None:
            continue
        mine = getattr(wrapper, name)
        if not isinstance(t, torch.Tensor) or not isinstance(mine, torch.Tensor) or t.shape != mine.shape:
            raise ModelLoadError(f"{what}: {record.class_name} buffer '{name}' does not fit the recorded arguments")
        with torch.no_grad():
            mine.copy_(t)
    for name in ("sigma_min", "sigma_max"):
        v = _float_or_none(record.state, name)
        if v is not None and not math.isnan(v):
            setattr(wrapper, name, v)


def load_edm_pickle(path: str | os.PathLike, *, device: str | torch.device = "cpu", key: str = "ema") -> nn.Module:
    """An EDM pickle's network as a diffbench Denoiser (eval, no grad), built without running its code."""
    data = read_edm_pickle(path)
    if key not in data:
        raise ModelLoadError(
            f"{os.fspath(path)} has no '{key}' entry (it has: {', '.join(map(str, data)) or 'nothing'})"
        )
    wrapper = build_denoiser(data[key], what=f"{os.fspath(path)} ['{key}']")
    wrapper.eval().requires_grad_(False)
    try:
        return wrapper.to(device)
    except (RuntimeError, AssertionError) as e:
        raise ModelLoadError(f"cannot move the network to device '{device}': {str(e).splitlines()[0]}") from None


# --------------------------------------------------------------------------------------- writing

EDM_PRECOND_NAMES = {spec.cls: name for name, spec in PRECONDS.items()}


def _module_record(module: nn.Module, src: str, init_kwargs: dict | None = None) -> Any:
    """A module's state in the layout EDM's persistence records (ModuleDicts stay plain ModuleDicts)."""
    state = {
        "training": module.training,
        "_parameters": {k: v for k, v in module._parameters.items()},
        "_buffers": {k: v for k, v in module._buffers.items()},
        "_non_persistent_buffers_set": set(module._non_persistent_buffers_set),
        "_modules": {k: (None if v is None else _module_record(v, src)) for k, v in module._modules.items()},
        "_init_args": (),
        "_init_kwargs": dict(init_kwargs or {}),
    }
    if isinstance(module, nn.ModuleDict):
        out = nn.ModuleDict()
        out.__dict__.update({"training": module.training, "_modules": state["_modules"]})
        return out
    return _Persistent(type(module).__name__, state, src)


class _EDMPickler(pickle._Pickler):
    """Pure-Python pickler that writes _HOOK as EDM's global torch_utils.persistence hook."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_hook(self, obj):
        self.save(PERSISTENT_HOOK[0])
        self.save(PERSISTENT_HOOK[1])
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)

    dispatch[_PersistentHookName] = _save_hook


def write_edm_pickle(
    path: str | os.PathLike,
    *,
    denoiser: nn.Module,
    key: str = "ema",
    extra: dict | None = None,
    module_src: str = NO_SOURCE,
    protocol: int = 4,
) -> None:
    """Write a diffbench precond wrapper in EDM's pickle layout (persistent objects, recorded arguments).

    `module_src` is the text stored where EDM stores each class's module source; diffbench never runs it.
    """
    if type(denoiser) not in EDM_PRECOND_NAMES:
        raise ConfigError(
            f"cannot write {type(denoiser).__name__} as an EDM pickle: it is not a VP/VE/iDDPM/EDM "
            "preconditioning wrapper"
        )
    name = EDM_PRECOND_NAMES[type(denoiser)]
    net = denoiser.model
    net_kwargs = dict(net.init_kwargs)
    pkw: dict[str, Any] = dict(
        img_resolution=denoiser.img_resolution,
        img_channels=denoiser.img_channels,
        label_dim=denoiser.label_dim,
        use_fp16=denoiser.use_fp16,
    )
    for c in PRECONDS[name].constants:
        pkw[c] = getattr(denoiser, c)
    pkw["model_type"] = type(net).__name__
    pkw.update(
        {k: v for k, v in net_kwargs.items() if k not in ("img_resolution", "in_channels", "out_channels", "label_dim")}
    )
    precond_state = {
        "training": denoiser.training,
        "_parameters": {},
        "_buffers": {},
        "_non_persistent_buffers_set": set(),
        "_modules": {"model": _module_record(net, module_src, net_kwargs)},
        "_init_args": (),
        "_init_kwargs": pkw,
        "img_resolution": denoiser.img_resolution,
        "img_channels": denoiser.img_channels,
        "label_dim": denoiser.label_dim,
        "use_fp16": denoiser.use_fp16,
        "sigma_min": denoiser.sigma_min,
        "sigma_max": denoiser.sigma_max,
        **{c: getattr(denoiser, c) for c in PRECONDS[name].constants},
    }
    if name == "iDDPMPrecond":
        precond_state["_buffers"] = {"u": denoiser.u.detach().cpu()}
    data = {key: _Persistent(name, precond_state, module_src), **(extra or {})}
    with open(os.fspath(path), "wb") as f:
        _EDMPickler(f, protocol=protocol).dump(data)
