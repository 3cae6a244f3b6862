"""The safe EDM pickle loader: round trips in EDM's pickle layout, refusals that run nothing, bad files."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from test_nets import (
    TINY,
    assert_close_to_reference,
    fixture_network,
    fixture_precond,
    load_fixture,
    net_inputs,
)

from diffbench.errors import ModelLoadError
from diffbench.models import edm_pickle as E
from diffbench.models.nets import build_network

ROUND_TRIP = ["song_ddpmpp", "song_ncsnpp", "song_skip", "adm_iddpm", "adm_edm"]
ALL = [*ROUND_TRIP, "song_res_skip"]


def written_from_fixture(tmp_path, name: str, **kwargs):
    """Write the fixture's network, wrapped as EDM recorded it, in EDM's format; (path, wrapper, fx)."""
    fx = load_fixture(name)
    wrapper = fixture_precond(fx, fixture_network(fx))
    path = tmp_path / f"{name}.pkl"
    E.write_edm_pickle(
        path, denoiser=wrapper, extra={"dataset_kwargs": {"resolution": wrapper.img_resolution}}, **kwargs
    )
    return path, wrapper, fx


def globals_named(path) -> set[tuple[str, str]]:
    """(module, name) of every global the pickle asks the unpickler for."""
    seen: set[tuple[str, str]] = set()

    class Recording(E._RestrictedUnpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    with open(path, "rb") as f:
        Recording(f).load()
    return seen


def marker_payload(marker) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_gives_identical_outputs(tmp_path, name):
    path, wrapper, fx = written_from_fixture(tmp_path, name)
    loaded = E.load_edm_pickle(path)
    assert type(loaded) is type(wrapper) and type(loaded.model) is type(wrapper.model)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in wrapper.state_dict().items()}
    x, labels, aug = net_inputs(fx)
    kwargs = {} if aug is None else {"augment_labels": aug}
    with torch.no_grad():
        out = loaded(x, fx["sigma"], labels, **kwargs)
        assert torch.equal(out, wrapper(x, fx["sigma"], labels, **kwargs))
    assert_close_to_reference(out, fx["D"])  # and equal to what EDM's own network computed
    for attr in ("sigma_min", "sigma_max", "img_channels", "img_resolution", "label_dim"):
        assert getattr(loaded, attr) == getattr(wrapper, attr)
    info = loaded.source_info
    assert info["format"] == "edm-pickle" and info["precond"] == fx["meta"]["precond"]
    assert info["network"] == fx["meta"]["network"]
    assert fx["meta"]["network_kwargs"].items() <= info["network_kwargs"].items()
    assert info["init_kwargs"]["model_type"] == fx["meta"]["network"]


def test_protocol_3_file_loads(tmp_path):
    """Protocol 3 spells sets as builtins.set(...); the same network comes back."""
    path, wrapper, fx = written_from_fixture(tmp_path, "adm_edm", protocol=3)
    assert ("builtins", "set") in globals_named(path)
    loaded = E.load_edm_pickle(path)
    x, labels, _ = net_inputs(fx)
    with torch.no_grad():
        assert torch.equal(loaded(x, fx["sigma"], labels), wrapper(x, fx["sigma"], labels))


@pytest.mark.skipif(not os.environ.get("DIFFBENCH_EDM_PICKLE_DIR"), reason="set DIFFBENCH_EDM_PICKLE_DIR")
def test_pickles_made_by_edm_itself():
    """Pickles written by NVlabs/edm itself (<fixture>.pkl; never shipped: they embed its source)."""
    folder = Path(os.environ["DIFFBENCH_EDM_PICKLE_DIR"])
    found = [p for p in sorted(folder.glob("*.pkl")) if p.stem in ALL]
    assert found, f"no <fixture>.pkl in {folder}"
    for path in found:
        fx = load_fixture(path.stem)
        loaded = E.load_edm_pickle(path)
        assert loaded.source_info["precond"] == fx["meta"]["precond"]
        x, labels, aug = net_inputs(fx)
        kwargs = {} if aug is None else {"augment_labels": aug}
        with torch.no_grad():
            assert_close_to_reference(loaded(x, fx["sigma"], labels, **kwargs), fx["D"])
        assert torch.equal(loaded.round_sigma(fx["round_probe"]), fx["round_sigma"])
        np.testing.assert_array_equal([loaded.sigma_min, loaded.sigma_max], fx["precond_sigma_range"].numpy())


def test_written_pickle_has_edm_structure(tmp_path):
    """Only the globals of EDM's format; networks as persistent objects with recorded arguments."""
    path, wrapper, fx = written_from_fixture(tmp_path, "song_skip")
    named = globals_named(path)
    assert named <= set(E.ALLOWED_GLOBALS)
    assert {
        E.PERSISTENT_HOOK,
        ("torch.nn.modules.container", "ModuleDict"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch.storage", "_load_from_bytes"),
        ("collections", "OrderedDict"),
    } <= named
    data = E.read_edm_pickle(path)
    assert set(data) == {"ema", "dataset_kwargs"}
    rec = data["ema"]
    assert isinstance(rec, E.PersistentRecord) and rec.class_name == "EDMPrecond"
    assert rec.init_kwargs["sigma_data"] == pytest.approx(0.6) and rec.init_kwargs["model_type"] == "SongUNet"
    inner = rec.state["_modules"]["model"]
    assert inner.class_name == "SongUNet" and fx["meta"]["network_kwargs"].items() <= inner.init_kwargs.items()
    assert isinstance(inner.state["_modules"]["enc"], E.ModuleDictRecord)


def test_positional_constructor_arguments(tmp_path):
    """EDM records *args too: positional arguments map to names in EDM's order."""
    path, wrapper, fx = written_from_fixture(tmp_path, "adm_edm")
    data = E.read_edm_pickle(path)
    inner = data["ema"].state["_modules"]["model"]
    kw = inner.state["_init_kwargs"]
    order = ["img_resolution", "in_channels", "out_channels"]
    inner.state["_init_args"] = tuple(kw.pop(k) for k in order)
    net = E.build_denoiser(data["ema"])
    assert fx["meta"]["network_kwargs"].items() <= net.model.init_kwargs.items()
    inner.state["_init_kwargs"]["in_channels"] = 3
    with pytest.raises(ModelLoadError, match="in_channels twice"):
        E.build_denoiser(data["ema"])


def test_iddpm_recorded_u_table_is_used(tmp_path):
    """The u table stored in the file drives round_sigma, as in EDM."""
    path, wrapper, fx = written_from_fixture(tmp_path, "adm_iddpm")
    data = E.read_edm_pickle(path)
    data["ema"].state["_buffers"]["u"] = fx["precond_buffers"]["u"]  # EDM's own float32 table
    data["ema"].state["sigma_max"] = float(fx["precond_sigma_range"][1])
    net = E.build_denoiser(data["ema"])
    assert torch.equal(net.round_sigma(fx["round_probe"]), fx["round_sigma"])
    assert net.sigma_max == float(fx["precond_sigma_range"][1])
    assert net.img_channels == 3 and net.model.out_channels == 6


def test_other_key_and_device(tmp_path):
    path, wrapper, fx = written_from_fixture(tmp_path, "song_res_skip")
    with pytest.raises(ModelLoadError, match=r"no 'net' entry \(it has: ema, dataset_kwargs\)"):
        E.load_edm_pickle(path, key="net")
    with pytest.raises(ModelLoadError, match="dataset_kwargs.*dict, not a network"):
        E.load_edm_pickle(path, key="dataset_kwargs")
    assert next(E.load_edm_pickle(path, device="cpu").parameters()).device.type == "cpu"
    with pytest.raises(ModelLoadError, match="cannot move the network to device 'tpu9'"):
        E.load_edm_pickle(path, device="tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="device 'cuda'"):
            E.load_edm_pickle(path, device="cuda")


# ------------------------------------------------------------------------------------ malicious pickles


def _text(t: str) -> bytes:
    return pickle.SHORT_BINUNICODE + bytes([len(t)]) + t.encode()


def reduce_pickle(module: str, name: str, arg: str | bytes) -> bytes:
    """A protocol-4 pickle {'ema': module.name(arg)}, written opcode by opcode."""
    s = pickle
    if isinstance(arg, str):
        arg_op = s.BINUNICODE + len(arg.encode()).to_bytes(4, "little") + arg.encode()
    else:
        arg_op = s.BINBYTES + len(arg).to_bytes(4, "little") + arg
    call = _text(module) + _text(name) + s.STACK_GLOBAL + arg_op + s.TUPLE1 + s.REDUCE
    return s.PROTO + bytes([4]) + s.EMPTY_DICT + _text("ema") + call + s.SETITEM + s.STOP


class ShellCall:
    """An object whose own __reduce__ asks the unpickler to run os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize(
    ("module", "name", "how"),
    [
        ("os", "system", "shell"),
        ("posix", "system", "shell"),
        ("builtins", "eval", "python"),
        ("builtins", "exec", "python"),
        ("subprocess", "getoutput", "shell"),
        ("subprocess", "Popen", "argv"),
        ("torch_utils.persistence", "_src_to_module", "python"),
        ("pickle", "loads", "inert"),
    ],
)
def test_forbidden_global_is_refused_and_nothing_runs(tmp_path, module, name, how):
    def payload(m):
        return f"touch {m}" if how in ("shell", "argv") else marker_payload(m)

    if how in ("shell", "python") and module != "torch_utils.persistence":
        live = tmp_path / "live"  # the payload is real: an ordinary unpickler runs it
        pickle.loads(reduce_pickle(module, name, payload(live)))
        assert live.exists()
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(reduce_pickle(module, name, payload(marker)))
    with pytest.raises(E.PickleSecurityError, match=f"'{module}.{name}'") as info:
        E.load_edm_pickle(path)
    assert isinstance(info.value, ModelLoadError) and "\n" not in str(info.value)
    assert not marker.exists()


def test_forbidden_global_from_a_real_reduce(tmp_path):
    """An object whose __reduce__ calls os.system, pickled by Python itself."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": ShellCall(f"touch {marker}"), "x": torch.zeros(2)}, protocol=4))
    with pytest.raises(E.PickleSecurityError, match=r"system', which is not on the allow-list"):
        E.load_edm_pickle(path)
    assert not marker.exists()


def test_embedded_module_source_is_never_executed(tmp_path):
    """The format's own vector: module_src is exec'd by EDM's loader; diffbench only records its length."""
    marker = tmp_path / "marker"
    src = f"import os\n{marker_payload(marker)}\nclass SongUNet: pass\n"
    path, wrapper, fx = written_from_fixture(tmp_path, "song_skip", module_src=src)
    assert src.encode() in path.read_bytes()
    loaded = E.load_edm_pickle(path)
    assert not marker.exists()
    assert E.read_edm_pickle(path)["ema"].source_chars == len(src)
    x, labels, aug = net_inputs(fx)
    with torch.no_grad():
        assert torch.equal(
            loaded(x, fx["sigma"], labels, augment_labels=aug),
            wrapper(x, fx["sigma"], labels, augment_labels=aug),
        )


def test_build_on_an_allowed_function_is_refused(tmp_path):
    """BUILD would set attributes on diffbench's allow-listed objects; only ModuleDict/dtype states pass."""
    s = pickle
    body = _text("collections") + _text("OrderedDict") + s.STACK_GLOBAL
    body += s.EMPTY_DICT + _text("foo") + s.NONE + s.SETITEM + s.BUILD + s.STOP
    path = tmp_path / "build.pkl"
    path.write_bytes(s.PROTO + bytes([4]) + body)
    with pytest.raises(E.PickleSecurityError, match="sets the state of a type"):
        E.read_edm_pickle(path)
    assert not hasattr(__import__("collections").OrderedDict, "foo")


def test_nested_storage_bytes_are_loaded_weights_only(tmp_path):
    """torch.storage._load_from_bytes must not run torch.load's full unpickler on the nested bytes."""

    def saved(command: str) -> bytes:  # the legacy torch.save format that EDM's storages use
        buf = io.BytesIO()
        torch.save(ShellCall(command), buf, _use_new_zipfile_serialization=False)
        return buf.getvalue()

    live = tmp_path / "live"  # torch.load without weights_only runs it
    torch.load(io.BytesIO(saved(f"touch {live}")), weights_only=False)
    assert live.exists()
    marker = tmp_path / "marker"
    path = tmp_path / "nested.pkl"
    path.write_bytes(reduce_pickle("torch.storage", "_load_from_bytes", saved(f"touch {marker}")))
    with pytest.raises(E.PickleSecurityError, match="weights-only load refuses"):
        E.load_edm_pickle(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- bad input


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot read EDM pickle .*No such file"):
        E.load_edm_pickle(tmp_path / "nope.pkl")
    with pytest.raises(ModelLoadError, match="is a directory"):
        E.load_edm_pickle(tmp_path)


def test_truncated_file(tmp_path):
    path, wrapper, fx = written_from_fixture(tmp_path, "adm_edm")
    data = path.read_bytes()
    for cut in (3, len(data) // 2, len(data) - 1):
        bad = tmp_path / "cut.pkl"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="not a readable EDM pickle") as info:
            E.load_edm_pickle(bad)
        assert "\n" not in str(info.value)


def test_wrong_formats(tmp_path):
    zipped = tmp_path / "ckpt.pt"
    torch.save({"w": torch.zeros(2)}, zipped)
    with pytest.raises(ModelLoadError, match="zip archive"):
        E.load_edm_pickle(zipped)
    other_zip = tmp_path / "a.zip"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(ModelLoadError, match="zip archive"):
        E.load_edm_pickle(other_zip)
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    with pytest.raises(ModelLoadError, match="text file"):
        E.load_edm_pickle(text)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not an EDM pickle"):
        E.load_edm_pickle(empty)
    listed = tmp_path / "list.pkl"
    listed.write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(ModelLoadError, match="holds a list, not a dict"):
        E.load_edm_pickle(listed)
    legacy = tmp_path / "legacy.pkl"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf, _use_new_zipfile_serialization=False)
    legacy.write_bytes(buf.getvalue())
    with pytest.raises(ModelLoadError):
        E.load_edm_pickle(legacy)


def edit_and_build(tmp_path, name, edit):
    path, wrapper, fx = written_from_fixture(tmp_path, name)
    data = E.read_edm_pickle(path)
    edit(data["ema"].state["_modules"]["model"])
    return lambda: E.build_denoiser(data["ema"], what="test.pkl")


def test_state_that_does_not_fit_names_the_keys(tmp_path):
    def drop(rec):
        del rec.state["_modules"]["map_layer0"].state["_parameters"]["bias"]

    with pytest.raises(ModelLoadError, match=r"missing map_layer0\.bias"):
        edit_and_build(tmp_path, "song_ddpmpp", drop)()

    def extra(rec):
        rec.state["_modules"]["map_layer1"].state["_parameters"]["gamma"] = torch.zeros(3)

    with pytest.raises(ModelLoadError, match=r"unexpected map_layer1\.gamma"):
        edit_and_build(tmp_path, "song_ddpmpp", extra)()

    def reshape(rec):
        enc = rec.state["_modules"]["enc"].state["_modules"]
        enc["16x16_conv"].state["_parameters"]["weight"] = torch.zeros(16, 3, 1, 1)

    shape_msg = r"wrong shape enc\.16x16_conv\.weight \(16, 3, 1, 1\) vs \(16, 3, 3, 3\)"
    with pytest.raises(ModelLoadError, match=shape_msg):
        edit_and_build(tmp_path, "song_ddpmpp", reshape)()

    def wrong_arch(rec):
        rec.state["_init_kwargs"]["num_blocks"] = 3

    with pytest.raises(ModelLoadError, match=r"missing .*block[23].* \(\+\d+ more\)"):
        edit_and_build(tmp_path, "adm_edm", wrong_arch)()


def test_unsupported_classes(tmp_path):
    def rename(rec):
        rec.class_name = "EvilNet"

    with pytest.raises(ModelLoadError, match="network class 'EvilNet' is not supported"):
        edit_and_build(tmp_path, "adm_edm", rename)()

    def bad_kwarg(rec):
        rec.state["_init_kwargs"]["evil"] = 1

    with pytest.raises(ModelLoadError, match="does not take argument.*evil"):
        edit_and_build(tmp_path, "adm_edm", bad_kwarg)()

    path, wrapper, fx = written_from_fixture(tmp_path, "adm_edm")
    data = E.read_edm_pickle(path)
    with pytest.raises(ModelLoadError, match="bare network 'DhariwalUNet'"):
        E.build_denoiser(data["ema"].state["_modules"]["model"])
    data["ema"].class_name = "SecretPrecond"
    with pytest.raises(ModelLoadError, match="unsupported class 'SecretPrecond'"):
        E.build_denoiser(data["ema"])


def test_writer_refuses_non_edm_wrappers(tmp_path):
    from diffbench.errors import ConfigError

    net = build_network("DhariwalUNet", TINY)
    with pytest.raises(ConfigError, match="not a VP/VE/iDDPM/EDM"):
        E.write_edm_pickle(tmp_path / "x.pkl", denoiser=net)


# ------------------------------------------------------------- memory safety: layouts the file must not control


class _Global:
    """Placeholder written as the global module.name (callable so the pickler accepts it as a reduce function)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # never called: only its name is written
        raise RuntimeError("placeholder")


class _Reduce:
    """An object that pickles as the given reduce tuple."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


class _CraftingPickler(E._EDMPickler):
    dispatch = dict(E._EDMPickler.dispatch)

    def _save_global(self, obj):
        self.save(obj.module)
        self.save(obj.name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)

    dispatch[_Global] = _save_global


def crafted_edm_pickle(path, state: dict, protocol: int = 4) -> Path:
    """{'ema': torch_utils.persistence._reconstruct_persistent_obj(meta)} with `state` as the object's state."""
    data = {"ema": E._Persistent("EDMPrecond", state)}
    with open(path, "wb") as f:
        _CraftingPickler(f, protocol=protocol).dump(data)
    return Path(path)


def structured_scalar(offset: int, module: str = "numpy.core.multiarray") -> _Reduce:
    """numpy scalar(dtype, 12 bytes) whose dtype's BUILD state puts an f8 field at `offset` (issue 13 §1)."""
    state = (3, "|", None, ("f0",), {"f0": (np.dtype("f8"), offset)}, 12, 1, 16)
    dtype = _Reduce(_Global("numpy", "dtype"), ("V12", False, True), state)
    return _Reduce(_Global(module, "scalar"), (dtype, b"\x00" * 12))


def _load_in_subprocess(paths) -> subprocess.CompletedProcess:
    """Load each file in one child process: a crash there (SIGSEGV) is a failed assertion here, not a dead run."""
    code = (
        "import sys\n"
        "from diffbench.errors import DiffbenchError\n"
        "from diffbench.models.edm_pickle import load_edm_pickle\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        load_edm_pickle(path)\n"
        "        print('loaded')\n"
        "    except DiffbenchError as e:\n"
        "        print(type(e).__name__, e)\n"
    )
    return subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=120)


def test_structured_dtype_with_file_controlled_offset_is_refused(tmp_path):
    """The crash file (field at 2^44) and the leak files (field past the 12 bytes) are refused with one line."""
    cases = [(2**44, "numpy.core.multiarray"), (16, "numpy.core.multiarray"), (4, "numpy._core.multiarray")]
    paths = [
        crafted_edm_pickle(tmp_path / f"evil{i}.pkl", {"x": structured_scalar(offset, module)})
        for i, (offset, module) in enumerate(cases)
    ]
    done = _load_in_subprocess(paths)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)  # not -11 (SIGSEGV)
    lines = done.stdout.splitlines()
    assert len(lines) == len(cases) and "Traceback" not in done.stderr
    for line in lines:
        assert line.startswith("PickleSecurityError refusing EDM pickle") and "'V12'" in line, line


def test_crash_file_through_the_cli_is_one_line(tmp_path):
    """`diffbench sample FILE.pkl` on the crash file: exit 1 with one line, no output written."""
    exe = shutil.which("diffbench") or str(Path(sys.executable).with_name("diffbench"))
    path = crafted_edm_pickle(tmp_path / "evil.pkl", {"x": structured_scalar(2**44)})
    out = tmp_path / "out.npz"
    done = subprocess.run(
        [exe, "sample", str(path), "--out", str(out), "--seeds", "0", "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr.startswith("error: refusing EDM pickle") and done.stderr.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("name", ["V12", "O", "(2,)f8", "S8", "U4", "M8", "c16", ">f8", "f8,i4", "object"])
def test_dtypes_other_than_plain_numbers_are_refused(tmp_path, name):
    dtype = _Reduce(_Global("numpy", "dtype"), (name, False, True))
    path = crafted_edm_pickle(
        tmp_path / "d.pkl", {"x": _Reduce(_Global("numpy.core.multiarray", "scalar"), (dtype, b""))}
    )
    with pytest.raises(E.PickleSecurityError, match="only plain numbers") as info:
        E.read_edm_pickle(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "state",
    [
        (3, ">", None, None, None, -1, -1, 0),  # byte order other than the file's name says
        (3, "<", None, ("f0",), {"f0": (np.dtype("f4"), 4)}, 8, 1, 16),  # fields
        (3, "<", (np.dtype("f8"), (2,)), None, None, 16, 8, 0),  # sub-array
        (3, "<", None, None, None, 1 << 44, 1, 0),  # element size
        [3, "<", None, None, None, -1, -1, 0],  # a list, not numpy's tuple
    ],
)
def test_dtype_build_state_other_than_canonical_is_refused(tmp_path, state):
    dtype = _Reduce(_Global("numpy", "dtype"), ("f8", False, True), state)
    scalar = _Reduce(_Global("numpy.core.multiarray", "scalar"), (dtype, b"\x00" * 8))
    path = crafted_edm_pickle(tmp_path / "s.pkl", {"x": scalar})
    with pytest.raises(E.PickleSecurityError, match="layout of its own"):
        E.read_edm_pickle(path)
    assert np.dtype("f8").fields is None and np.dtype("f8").itemsize == 8  # numpy's own dtype untouched


def test_plain_numpy_scalars_load_with_their_values(tmp_path):
    """Plain numpy scalars (as hyperparameters in EDM's training options) load, through numpy's own pickling."""
    values = {
        "f4": np.float32(1.5),
        "f8": np.float64(-2.25),
        "f2": np.float16(0.5),
        "i8": np.int64(-(2**40)),
        "i1": np.int8(-3),
        "u1": np.uint8(200),
        "u4": np.uint32(7),
        "b1": np.bool_(True),
    }
    wrapper = fixture_precond(load_fixture("song_skip"), fixture_network(load_fixture("song_skip")))
    path = tmp_path / "opts.pkl"
    E.write_edm_pickle(path, denoiser=wrapper, extra={"options": values})
    assert ("numpy", "dtype") in globals_named(path)
    got = E.read_edm_pickle(path)["options"]
    for key, v in values.items():
        assert got[key].dtype == v.dtype and got[key] == v, key
    assert type(E.load_edm_pickle(path)).__name__ == "EDMPrecond"


def test_scalar_bytes_must_match_the_dtype(tmp_path):
    dtype = _Reduce(_Global("numpy", "dtype"), ("f8", False, True), np.dtype("f8").__reduce__()[2])
    path = crafted_edm_pickle(
        tmp_path / "s.pkl", {"x": _Reduce(_Global("numpy.core.multiarray", "scalar"), (dtype, b"\x00" * 64))}
    )
    with pytest.raises(ModelLoadError, match="numpy scalar of the wrong size"):
        E.read_edm_pickle(path)


def test_tensor_view_outside_its_storage_is_refused(tmp_path):
    """_rebuild_tensor_v2 with an offset, size or stride past the storage: refused before torch sees it."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.save(torch.arange(6.0).storage(), buf, _use_new_zipfile_serialization=False)
    storage = _Reduce(_Global("torch.storage", "_load_from_bytes"), (buf.getvalue(),))
    rebuild = _Global("torch._utils", "_rebuild_tensor_v2")
    cases = [
        ((storage, 0, (2, 3), (3, 1), False, OrderedDict()), None),  # fits: loads
        ((storage, 4, (3,), (1,), False, OrderedDict()), "reaches element 6 of a storage of 6"),
        ((storage, 0, (2, 3), (4, 1), False, OrderedDict()), "reaches element 6"),
        ((storage, 2**44, (1,), (1,), False, OrderedDict()), "malformed offset"),
        ((storage, -1, (1,), (1,), False, OrderedDict()), "malformed offset"),
        ((storage, 0, (1,), (-1,), False, OrderedDict()), "malformed offset"),
    ]
    for args, match in cases:
        path = crafted_edm_pickle(tmp_path / "t.pkl", {"t": _Reduce(rebuild, args)})
        if match is None:
            t = E.read_edm_pickle(path)["ema"].state["t"]
            assert torch.equal(t, torch.arange(6.0).reshape(2, 3))
        else:
            with pytest.raises(ModelLoadError, match=match):
                E.read_edm_pickle(path)


@pytest.mark.parametrize(
    "opcode", [pickle.EXT1 + b"\xf0", pickle.EXT2 + b"\xf0\x00", pickle.EXT4 + b"\xf0\x00\x00\x00"]
)
def test_extension_opcodes_are_refused_even_when_registered(tmp_path, opcode):
    """EXT1/2/4 resolve through copyreg's registry, which other code in the process can fill."""
    import copyreg

    marker = tmp_path / "marker"
    body = opcode + _text(f"touch {marker}") + pickle.TUPLE1 + pickle.REDUCE
    data = pickle.PROTO + b"\x04" + pickle.EMPTY_DICT + _text("ema") + body + pickle.SETITEM + pickle.STOP
    path = tmp_path / "ext.pkl"
    path.write_bytes(data)
    copyreg.add_extension("os", "system", 240)
    try:
        with pytest.raises(E.PickleSecurityError, match="extension code") as info:
            E.read_edm_pickle(path)
    finally:
        copyreg.remove_extension("os", "system", 240)
    assert "\n" not in str(info.value) and not marker.exists()


def test_protocol_2_file_loads_and_python2_names_stay_restricted(tmp_path):
    """Protocol 2 spells set as __builtin__.set and bytes as _codecs.encode: mapped to the same allow-list."""
    path, wrapper, fx = written_from_fixture(tmp_path, "adm_edm", protocol=2)
    assert {("__builtin__", "set"), ("_codecs", "encode")} <= globals_named(path)
    loaded = E.load_edm_pickle(path)
    x, labels, _ = net_inputs(fx)
    with torch.no_grad():
        assert torch.equal(loaded(x, fx["sigma"], labels), wrapper(x, fx["sigma"], labels))
    for module, name in (("__builtin__", "eval"), ("__builtin__", "getattr"), ("copy_reg", "_reconstructor")):
        p2 = pickle.PROTO + b"\x02" + pickle.GLOBAL + f"{module}\n{name}\n".encode() + pickle.STOP
        bad = tmp_path / "p2.pkl"
        bad.write_bytes(p2)
        with pytest.raises(E.PickleSecurityError, match=f"'{module}.{name}'"):
            E.read_edm_pickle(bad)
    codec = tmp_path / "codec.pkl"
    codec.write_bytes(
        pickle.PROTO
        + b"\x02"
        + pickle.GLOBAL
        + b"_codecs\nencode\n"
        + _text("x")
        + _text("rot13")
        + pickle.TUPLE2
        + pickle.REDUCE
        + pickle.STOP
    )
    with pytest.raises(E.PickleSecurityError, match="latin1"):
        E.read_edm_pickle(codec)
