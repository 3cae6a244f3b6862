"""Write the sha256 and size of every shipped built-in file into diffbench/checkpoints.toml (after training).

Each [checkpoint.*] entry whose url is builtin:FILE gets `sha256 = "..."` and `size = N` lines for FILE;
nothing else in the file changes. Run: python benchmarks/digits_hashes.py
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "diffbench" / "checkpoints.toml"
BUILTIN = ROOT / "diffbench" / "models" / "builtin"


def main() -> None:
    text = TOML.read_text()
    out = []
    for block in re.split(r"(?m)^(?=\[checkpoint\.)", text):
        m = re.search(r'(?m)^url = "builtin:([^"]+)"$', block)
        if m:
            path = BUILTIN / m.group(1)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            block = re.sub(r'(?m)^sha256 = "[0-9a-f]*"$', f'sha256 = "{digest}"', block)
            block = re.sub(r"(?m)^size = \d+$", f"size = {path.stat().st_size}", block)
            print(f"{m.group(1)}: {digest} ({path.stat().st_size} bytes)")
        out.append(block)
    TOML.write_text("".join(out))


if __name__ == "__main__":
    main()
