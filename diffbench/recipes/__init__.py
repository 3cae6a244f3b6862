"""Published tables as runnable sweeps: TOML sweep configs shipped with the package (issue 24, "published tables").

Each `<name>.toml` here is an ordinary sweep config (README, "Sweep config"; sweep/grid.py load_config) on a
registry checkpoint, plus a `[recipe]` table: `title`, `source` (paper, table; where the numbers come from), and
one `[[recipe.published]]` entry per published number: `metric`, `value`, `nfe` (the paper's NFE, checked
against the plan), optional `where = {option = value}` (the cells it belongs to, as in `[[cell]]` overrides)
and `statistic`: "value" (the metric over all seeds) or "min-block" (the lowest seed block: EDM reports the
best of three runs of 50,000 images, which are the three seed blocks of its recipes).

`diffbench recipes` lists them; `diffbench sweep --recipe NAME` runs one (a smaller --seeds is a quick look,
marked as such), then prints each measured value beside the published one with the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffbench.errors import ConfigError, UnknownNameError

STATISTICS = ("value", "min-block")


@dataclass(frozen=True)
class Published:
    """One published number: metric, value, the paper's NFE, the cells it belongs to, the statistic compared."""

    metric: str
    value: float
    nfe: int | None = None
    where: dict[str, Any] = field(default_factory=dict)
    statistic: str = "value"

    def matches(self, options: dict[str, Any]) -> bool:
        return all(options.get(k) == v for k, v in self.where.items())


@dataclass(frozen=True)
class Recipe:
    """A shipped sweep config with the published numbers it reproduces."""

    name: str
    path: Path
    title: str
    source: str
    model: str
    seeds: str
    published: tuple[Published, ...]


def recipe_dir() -> Path:
    return Path(__file__).resolve().parent


def _load(path: Path) -> Recipe:
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"recipe {path.name}: cannot read ({exc})") from None
    meta = data.get("recipe")
    if not isinstance(meta, dict) or not meta.get("title") or not meta.get("source"):
        raise ConfigError(f"recipe {path.name}: needs a [recipe] table with title and source")
    pubs = []
    for i, p in enumerate(meta.get("published", [])):
        if not isinstance(p, dict) or not isinstance(p.get("value"), int | float) or not p.get("metric"):
            raise ConfigError(f"recipe {path.name}: [[recipe.published]] number {i + 1} needs metric and value")
        stat = p.get("statistic", "value")
        if stat not in STATISTICS:
            raise UnknownNameError(f"statistic in recipe {path.name}", stat, STATISTICS)
        pubs.append(Published(str(p["metric"]), float(p["value"]), p.get("nfe"), dict(p.get("where", {})), stat))
    if not pubs:
        raise ConfigError(f"recipe {path.name}: no [[recipe.published]] values")
    return Recipe(
        path.stem, path, str(meta["title"]), str(meta["source"]), str(data["model"]), str(data["seeds"]), tuple(pubs)
    )


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, by name."""
    return [_load(p) for p in sorted(recipe_dir().glob("*.toml"))]


def get_recipe(name: str) -> Recipe:
    """One recipe by name (UnknownNameError naming the shipped ones)."""
    path = recipe_dir() / f"{name}.toml"
    if not path.is_file():
        names = [p.stem for p in sorted(recipe_dir().glob("*.toml"))]
        raise UnknownNameError("recipe", name, names, list_all=True)  # a dozen names, each typed exactly
    return _load(path)


def measured(result: dict[str, Any], statistic: str) -> float:
    """The number to set beside a published one: the value over all seeds, or the lowest seed block."""
    if statistic == "min-block":
        blocks = [float(b) for b in result.get("blocks") or [] if b is not None]
        return min(blocks) if blocks else math.nan
    v = result.get("value")
    return math.nan if v is None else float(v)


def comparison(recipe: Recipe, cells: list[Any], rows: list[dict[str, Any]], *, quick: bool) -> list[dict[str, Any]]:
    """For every finished cell and each published number that belongs to it: measured, published, difference.

    cells: the grid's cells (their `options` are matched against `where`), rows: the store rows in the same order.
    quick: the run used other seeds than the recipe's (a quick look: not comparable to the paper's number).
    """
    out = []
    for cell, row in zip(cells, rows, strict=True):
        if row.get("status") != "done":
            continue
        results = row.get("results") or {}
        for p in recipe.published:
            if not p.matches(cell.options) or p.metric not in results:
                continue
            m = measured(results[p.metric], p.statistic)
            out.append(
                {
                    "id": row.get("id"),
                    "cell": cell.config,
                    "nfe": row.get("nfe"),
                    "published_nfe": p.nfe,
                    "metric": p.metric,
                    "statistic": p.statistic,
                    "measured": m,
                    "published": p.value,
                    "difference": m - p.value,
                    "quick_look": quick,
                    "source": recipe.source,
                }
            )
    return out


def comparison_lines(recipe: Recipe | None, table: list[dict[str, Any]]) -> list[str]:
    """The comparison as text lines (a Markdown table) with the source and, for a quick look, the warning.
    recipe None: the lines of entries read back from a store (`report`), their sources from the entries."""
    if not table:
        return []
    sources = sorted({str(r["source"]) for r in table})
    lines = [recipe.title] if recipe is not None else ["measured beside published"]
    lines.append(f"source: {'; '.join(sources)}")
    if any(r["quick_look"] for r in table):
        seeds = f" {recipe.seeds}" if recipe is not None else ""
        lines.append(f"QUICK LOOK: other seeds than the recipe's{seeds}; not comparable to the paper's numbers")
    lines += ["", "| cell | NFE | metric | measured | published | difference |", "|---|---|---|---|---|---|"]
    for r in table:
        stat = " (lowest block)" if r["statistic"] == "min-block" else ""
        lines.append(
            f"| {r['cell']} | {r['nfe']} | {r['metric']}{stat} | {r['measured']:.4g} | {r['published']:.4g} "
            f"| {r['difference']:+.4g} |"
        )
    return lines


def stored_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The comparison recorded in a store's cells (under `published` in their provenance), for `report`."""
    table = [e for r in rows for e in ((r.get("provenance") or {}).get("published") or [])]
    return comparison_lines(None, table)
