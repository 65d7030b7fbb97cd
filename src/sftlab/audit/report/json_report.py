"""report.json: every number of the audit, the findings, and the config used.

NaN and infinities are not JSON: they are written as null. numpy scalars and arrays become plain
numbers and lists.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.audit.report.section import Finding, Section
from sftlab.io import write_atomic


def to_jsonable(value: Any) -> Any:
    """Recursively turn ``value`` into plain JSON types (NaN/inf -> None)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_report(
    sections: Sequence[Section], findings: Sequence[Finding], config: dict[str, Any], models: dict[str, str],
    base: str, meta: dict[str, Any],
) -> dict[str, Any]:
    """The report.json document."""
    return to_jsonable({
        "meta": meta,
        "config": config,
        "base": base,
        "models": models,
        "summary": [asdict(f) for f in findings],
        "sections": {s.key: s.data for s in sections},
    })


def write_json(doc: dict[str, Any], path: Path) -> None:
    """Write strict JSON (``allow_nan=False`` proves no NaN slipped through)."""
    write_atomic(path, json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False))
