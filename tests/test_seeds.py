"""Seed lists: 0 <= s < 2^32 (EDM's generator takes seeds modulo 2^32), bounded length checked before allocating."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import diffbench
from diffbench.errors import ConfigError
from diffbench.sampling.noise import NoiseSource
from diffbench.seeds import MAX_SEEDS, parse_seeds


def test_seed_lists_parse():
    assert parse_seeds("0-3,7, 10-11") == [0, 1, 2, 3, 7, 10, 11]
    assert parse_seeds("4294967295") == [2**32 - 1]


@pytest.mark.parametrize(
    "text,message",
    [
        ("4294967296", "out of range"),
        ("0-4294967296", "out of range"),
        ("18446744073709551616", "out of range"),
        (f"0-{MAX_SEEDS}", "more than"),
        ("0-999999999999", "out of range"),
        ("5-3", "end before start"),
        ("1,1", "repeats"),
        ("a", "malformed"),
    ],
)
def test_bad_seed_lists_are_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as exc:
        parse_seeds(text)
    assert "\n" not in str(exc.value)


def test_the_length_is_checked_before_the_list_is_built(monkeypatch):
    """Two ranges just under the limit each are refused together without materialising either."""
    half = MAX_SEEDS // 2 + 1
    with pytest.raises(ConfigError, match="more than"):
        parse_seeds(f"0-{half - 1},{half}-{2 * half}")


def test_api_refuses_seeds_out_of_range_and_too_many(gmm):
    with pytest.raises(ConfigError, match="out of range"):
        NoiseSource([2**32])
    with pytest.raises(ConfigError, match="out of range"):
        diffbench.sample(gmm, seeds=[-1], solver="euler", nfe=2)
    with pytest.raises(ConfigError, match="more than"):
        diffbench.sample(gmm, seeds=range(10**12), solver="euler", nfe=2)


def test_cli_refuses_a_seed_above_2_32(tmp_path):
    exe = shutil.which("diffbench") or str(Path(sys.executable).with_name("diffbench"))
    r = subprocess.run(
        [exe, "sample", "gmm", "--seeds", "0,4294967296", "--out", str(tmp_path / "o.npz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "out of range" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.npz").exists()
