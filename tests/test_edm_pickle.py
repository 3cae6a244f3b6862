"""The safe EDM pickle loader: round trips in EDM's pickle layout, refusals that run nothing, bad files."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
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
