"""`diffbench solvers` and `diffbench schedules`: what exists, as a table or as JSON for scripts."""

from __future__ import annotations

from typing import Annotated

import typer

from diffbench.cli.app import app
from diffbench.cli.options import BY_KEY
from diffbench.io_json import dumps_json


@app.command("solvers")
def solvers_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False) -> None:
    """List the solvers: order, NFE rule, stochastic or not, options and source paper."""
    from rich.console import Console
    from rich.table import Table

    from diffbench.sampling.guidance import NFE_CONVENTION
    from diffbench.sampling.solvers import all_solvers

    rows = [{**s.describe(), "nfe_under_guidance": NFE_CONVENTION} for s in all_solvers()]
    if as_json:
        typer.echo(dumps_json(rows))
        return
    table = Table("name", "order", "NFE rule", "stochastic", "options", "paper", title="solvers")
    for r in rows:
        stoch = "yes" if r["stochastic"] else ("with churn" if r["churn"] else "no")
        flags = ", ".join(BY_KEY[k].flag if k in BY_KEY else k for k in r["options"])  # as typed on the CLI
        table.add_row(r["name"], str(r["order"]), r["nfe_rule"], stoch, flags, r["paper"])
    Console().print(table)


@app.command("schedules")
def schedules_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List the sigma grids: default range, options and source."""
    from rich.console import Console
    from rich.table import Table

    from diffbench.sampling.schedules import SCHEDULES

    rows = [
        {
            "name": s.name,
            "sigma_min": s.default_range[0],
            "sigma_max": s.default_range[1],
            "options": list(s.options),
            "paper": s.paper,
        }
        for s in SCHEDULES.values()
    ]
    rows.append(
        {
            "name": "file:PATH",
            "sigma_min": None,
            "sigma_max": None,
            "options": [],
            "paper": "descending sigmas from a text or .npy file",
        }
    )
    if as_json:
        typer.echo(dumps_json(rows))
        return
    table = Table("name", "default sigma range", "options", "source", title="schedules")
    for r in rows:
        rng = "from file" if r["sigma_min"] is None else f"{r['sigma_min']:.6g} .. {r['sigma_max']:.6g}"
        table.add_row(r["name"], rng, ", ".join(BY_KEY[k].flag if k in BY_KEY else k for k in r["options"]), r["paper"])
    Console().print(table)


@app.command("recipes")
def recipes_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False) -> None:
    """List the published tables shipped as sweeps (run one: diffbench sweep --recipe NAME)."""
    from rich.console import Console
    from rich.table import Table

    from diffbench.recipes import list_recipes

    rows = [
        {
            "name": r.name,
            "title": r.title,
            "model": r.model,
            "seeds": r.seeds,
            "published": [{"metric": p.metric, "value": p.value, "nfe": p.nfe, **p.where} for p in r.published],
            "source": r.source,
        }
        for r in list_recipes()
    ]
    if as_json:
        typer.echo(dumps_json(rows))
        return
    table = Table(title="recipes (diffbench sweep --recipe NAME)")
    # the name (typed after --recipe) is never cut; the other columns wrap, folding long words
    table.add_column("name", no_wrap=True, min_width=max(len(r["name"]) for r in rows))
    table.add_column("what", overflow="fold", ratio=2)
    table.add_column("model", overflow="fold", ratio=1)
    table.add_column("published", overflow="fold", ratio=2)
    for r in rows:
        pub = ", ".join(f"{p['metric']} {p['value']:g} @ NFE {p['nfe']}" for p in r["published"])
        table.add_row(r["name"], r["title"], r["model"], pub)
    Console().print(table)
