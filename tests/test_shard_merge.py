"""Many cells across many machines: `sweep --shard I/N` and `diffbench merge`. A grid run as 3 shards and
merged exports what the grid run whole exports; every refusal is one line and writes nothing."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import one_error_line

from diffbench.errors import ConfigError
from diffbench.sweep.cell import prepare
from diffbench.sweep.grid import make_grid
from diffbench.sweep.merge import MergeError, merge_stores
from diffbench.sweep.runner import run_sweep
from diffbench.sweep.shard import Shard, assign, parse_shard
from diffbench.sweep.store import Store, StoreError

pytestmark = pytest.mark.usefixtures("home")

TINY = "gmm:components=2,shape=1x2x2,seed=3"
OTHER = "gmm:components=2,shape=1x2x2,seed=4"
# a grid with a skipped cell (heun reaches only odd NFE), so skipped cells are sharded and merged too
AXES = {"solver": ["euler", "heun", "dpmpp-2m"], "nfe": [4, 5, 9]}
VOLATILE = ("created", "updated", "wall_s", "images_per_s")  # when and how fast: not what was measured


def _load(name):
    from diffbench.models.analytic import load_builtin

    return load_builtin(name)


def _run(path, *, model=TINY, shard=None, axes=AXES):
    m = _load(model)
    bench = prepare(m, seeds=range(24), metrics=["fd-exact", "sw"], blocks=3, batch=8, device="cpu")
    with Store(path) as st:
        rows = run_sweep(bench, make_grid(m, axes), st, shard=shard)
        return rows, st.export()


def _comparable(export):
    out = []
    for c in export["cells"]:
        c = {k: v for k, v in c.items() if k not in VOLATILE}
        prov = {k: v for k, v in (c.get("provenance") or {}).items() if k not in (*VOLATILE, "shard")}
        if "environment" in prov:
            prov["environment"] = {k: v for k, v in prov["environment"].items() if k != "time"}
        out.append({**c, "provenance": prov})
    return out


def test_three_shards_merged_export_what_the_whole_grid_exports(tmp_path):
    _, whole = _run(tmp_path / "whole.db")
    parts = []
    for i in range(3):
        rows, _ = _run(tmp_path / f"s{i}.db", shard=Shard(i, 3))
        parts.append({r["id"] for r in rows})
    assert sum(map(len, parts)) == len(whole["cells"]) == 9 and not (parts[0] & parts[1] | parts[1] & parts[2])
    # balanced by NFE: the 8 runnable cells (NFE 9, 9, 9, 5, 5, 5, 4, 4; heun skips 4) in 3 shards, the best split
    nfe = {c["id"]: (c.get("nfe") or 0) for c in whole["cells"]}
    assert sorted(sum(nfe[c] for c in p) for p in parts) == [14, 18, 18]
    res = merge_stores([tmp_path / f"s{i}.db" for i in range(3)], tmp_path / "all.db")
    assert res.added == 9 and res.present == 0
    with Store(tmp_path / "all.db", write=False) as st:
        merged = st.export()
    assert _comparable(merged) == _comparable(whole)
    assert any(c["status"] == "skipped" for c in merged["cells"])
    # merging again (a shard reran) adds nothing and changes nothing
    again = merge_stores([tmp_path / f"s{i}.db" for i in range(3)], tmp_path / "all.db")
    assert again.added == 0 and again.present == 9
    # a rerun of one shard picks up exactly its own cells, all finished
    events = []
    m = _load(TINY)
    bench = prepare(m, seeds=range(24), metrics=["fd-exact", "sw"], blocks=3, batch=8, device="cpu")
    with Store(tmp_path / "s1.db") as st:
        run_sweep(bench, make_grid(m, AXES), st, shard=Shard(1, 3), on_event=events.append)
    kinds = {e.kind for e in events}
    assert "start" not in kinds and sum(e.kind in ("cached", "skipped") for e in events) == len(parts[1])


def test_shard_parsing():
    assert parse_shard("0/1") == Shard(0, 1) and parse_shard(" 2/3 ") == Shard(2, 3)
    for bad in ("3/3", "0/0", "-1/2", "1", "a/b", "1/-2", "4/3"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    # any N: every cell in one shard; the order the cells come in does not matter; longest first
    cells = [(f"{i:064x}", float(i % 7)) for i in range(0, 10**5, 797)]
    for n in (1, 2, 5, 200):
        to = assign(cells, n)
        assert set(to) == {c for c, _ in cells} and assign(cells[::-1], n) == to
        loads = [sum(w for c, w in cells if to[c] == k) for k in range(n)]
        assert max(loads) - min(loads) <= 6  # LPT: within the largest cost


def test_merge_refusals_write_nothing(tmp_path):
    _run(tmp_path / "a.db", axes={"solver": ["euler"], "nfe": [4, 5]})
    _run(tmp_path / "b.db", axes={"solver": ["euler"], "nfe": [5, 9]})
    _run(tmp_path / "other.db", model=OTHER, axes={"solver": ["euler"], "nfe": [4]})
    # another model
    with pytest.raises(MergeError, match="model"):
        merge_stores([tmp_path / "a.db", tmp_path / "other.db"], tmp_path / "m.db")
    assert not (tmp_path / "m.db").exists()
    # one cell (euler NFE 5) with other results in b.db
    con = sqlite3.connect(tmp_path / "b.db")
    row = con.execute("SELECT id, results FROM cells WHERE nfe_requested=5").fetchone()
    res = json.loads(row[1])
    res["sw"]["value"] *= 1.5
    with con:
        con.execute("UPDATE cells SET results=? WHERE id=?", (json.dumps(res), row[0]))
    con.close()
    with pytest.raises(MergeError, match="different results"):
        merge_stores([tmp_path / "a.db", tmp_path / "b.db"], tmp_path / "m.db")
    assert not (tmp_path / "m.db").exists()
    # another schema
    con = sqlite3.connect(tmp_path / "other.db")
    with con:
        con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.close()
    with pytest.raises(StoreError, match="schema 99"):
        merge_stores([tmp_path / "a.db", tmp_path / "other.db"], tmp_path / "m.db")
    assert not (tmp_path / "m.db").exists()
    # into an existing store: added to it
    merge_stores([tmp_path / "a.db"], tmp_path / "m.db")
    before = (tmp_path / "m.db").stat().st_size
    with pytest.raises(ConfigError, match="also one of the stores"):
        merge_stores([tmp_path / "m.db"], tmp_path / "m.db")
    assert (tmp_path / "m.db").stat().st_size == before


def test_bad_input_through_the_command(tmp_path, cli):
    _run(tmp_path / "a.db", axes={"solver": ["euler"], "nfe": [4]})
    _run(tmp_path / "o.db", model=OTHER, axes={"solver": ["euler"], "nfe": [4]})
    (tmp_path / "notes.txt").write_text("not a store")
    for shard in ("3/3", "0/0", "x"):
        code, _, err = cli(
            "sweep", TINY, "--nfe", "4", "--seeds", "0-9", "--store", tmp_path / "s.db", "--shard", shard
        )
        assert code == 2 and "--shard" in one_error_line(code, err)
    assert not (tmp_path / "s.db").exists()
    for args, needle in [
        ((tmp_path / "a.db", tmp_path / "o.db"), "model"),
        ((tmp_path / "a.db", tmp_path / "missing.db"), "no such results store"),
        ((tmp_path / "a.db", tmp_path / "notes.txt"), "not a diffbench results store"),
    ]:
        code, _, err = cli("merge", *args, "-o", tmp_path / "m.db")
        assert needle in one_error_line(code, err)
        assert not (tmp_path / "m.db").exists()
    code, _, err = cli("merge", tmp_path / "a.db", "-o", tmp_path / "m.db")
    assert code == 0 and "1 cell(s) added" in err
    code, out, _ = cli("report", tmp_path / "m.db", "--format", "csv")
    assert code == 0 and "euler" in out


def test_merge_refuses_other_seeds_a_store_named_twice_and_a_missing_folder(tmp_path):
    """Stores on other seeds would share table rows (one shown per sampler); a store named twice and an output
    in a folder that does not exist are mistakes: one line each, nothing written."""
    m = _load(TINY)
    for name, seeds in (("a.db", range(24)), ("b.db", range(24, 48))):
        bench = prepare(m, seeds=seeds, metrics=["sw"], blocks=3, batch=8, device="cpu")
        with Store(tmp_path / name) as st:
            run_sweep(bench, make_grid(m, {"solver": ["euler"], "nfe": [4]}), st)
    with pytest.raises(MergeError, match=r"on seeds 0-23, .*on seeds 24-47: merge combines shards of one grid"):
        merge_stores([tmp_path / "a.db", tmp_path / "b.db"], tmp_path / "ab.db")
    with pytest.raises(ConfigError, match="named twice"):
        merge_stores([tmp_path / "a.db", tmp_path / "a.db"], tmp_path / "aa.db")
    with pytest.raises(ConfigError, match="does not exist"):
        merge_stores([tmp_path / "a.db"], tmp_path / "no" / "such" / "x.db")
    assert not any((tmp_path / n).exists() for n in ("ab.db", "aa.db", "no"))
