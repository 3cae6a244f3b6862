"""Blocks of one seed: a covariance metric is refused before the store exists (a block's FD needs >= 2 samples)."""

from __future__ import annotations

import pytest

from diffbench.errors import ConfigError


def test_covariance_metric_on_blocks_of_one_seed_is_refused_up_front(cli, tmp_path):
    from diffbench.sweep.bench import prepare

    with pytest.raises(ConfigError, match="blocks of 1 seed: a block's covariance needs at least 2 samples"):
        prepare("gmm", seeds=list(range(12)), metrics=["fd-exact"], blocks=12, allow_small_n=True)
    prepare("gmm", seeds=list(range(12)), metrics=["fd-exact"], blocks=6, allow_small_n=True)  # 2 per block: fine
    prepare("gmm", seeds=list(range(12)), metrics=["ref-error"], blocks=12)  # no covariance: blocks of 1 are fine
    store = tmp_path / "x.db"
    code, _, err = cli(
        "sweep", "gmm", "--solver", "euler", "--nfe", "5", "--seeds", "0-11", "--metric", "fd-exact",
        "--allow-small-n", "--store", store,
    )
    assert code == 2 and "blocks of 1 seed" in err and "Traceback" not in err
    assert not store.exists() and not (tmp_path / "x.db.lock").exists()
