"""Standard JSON out (no NaN/Infinity tokens): NaN becomes null, +-infinity the strings "inf" / "-inf".

Light on purpose (no torch import): every --json output and every sidecar goes through `dumps_json`.
"""

from __future__ import annotations

import json
import math
from typing import Any


def plain_json(value: Any) -> Any:
    """A JSON-safe copy: NaN -> None, +-inf -> "inf" / "-inf", tuples -> lists, dict keys kept."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    return value


def dumps_json(data: Any) -> str:
    """Standard JSON text, indented."""
    return json.dumps(plain_json(data), indent=2, default=str, allow_nan=False)
