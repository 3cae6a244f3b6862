"""`diffbench fit-prior`: fit an auxiliary prior of the noised data at one sigma (diffbench.priors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffbench.cli.app import app


@app.command("fit-prior")
def fit_prior_cmd(
    source: Annotated[
        str, typer.Argument(help="Images (folder, .zip, .npz) or digits[-data][:train|heldout|all] (bare: train).")
    ],
    sigma: Annotated[float, typer.Option("--sigma", help="The sigma the prior models (sample with --sigma-max S).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The prior file to write (.npz).")],
    kind: Annotated[str, typer.Option("--kind", help="gaussian, or gmm:K (K full-covariance components, EM).")] = (
        "gaussian"
    ),
    reg: Annotated[
        float | None, typer.Option(help="Added to each covariance's diagonal (default: 0 gaussian, 1e-4 gmm).", min=0)
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the mixture's k-means++ initialisation.", min=0)] = 0,
    max_iter: Annotated[int, typer.Option(help="Most EM iterations.", min=1)] = 200,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Fit N(mu, Sigma + S^2 I) or a K-component mixture of the data plus S^2 I: a start for `--prior file:OUT`.

    Example: diffbench fit-prior digits-data --sigma 5 --kind gmm:10 -o digits-gmm10-s5.npz
    """
    import math

    from diffbench.errors import ConfigError, OutputExistsError
    from diffbench.priors import fit_prior as fit
    from diffbench.priors import load_data, parse_kind, save_prior

    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"--sigma must be a finite number > 0, got {sigma}")
    parse_kind(kind)
    if out.suffix != ".npz":
        raise ConfigError(f"--out {out}: a prior is written as a file ending in .npz")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} already exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist")
    data = load_data(source)
    prior = fit(data, sigma=sigma, kind=kind, reg=reg, seed=seed, max_iter=max_iter)
    digest = save_prior(prior, out)
    f = prior.meta["fit"]
    extra = ""
    if prior.k > 1:
        extra = f", EM {f['iterations']} iterations ({'converged' if f['converged'] else 'not converged'})"
    typer.echo(
        f"wrote {out}: {prior.kind} at sigma {sigma:g} of {data.n} images {list(data.shape)} from {data.label}"
        f"{extra}; sha256 {digest[:16]}"
    )
