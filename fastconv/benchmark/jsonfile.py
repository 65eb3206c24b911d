"""``--json FILE`` and ``--compare OLD.json``: save and load a run's document.

(``--markdown`` uses the same atomic :func:`write_text`.)

The file is written atomically (a temporary file in the same folder, then ``os.replace``),
so an interrupted run never leaves a half-written JSON where a good one was, and it is read
with ``json`` alone (no pickle).
"""
import json
import math

from .._files import atomic_write_text


def _clean(value):
    """NaN and infinities are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_text(text, path):
    """Write ``text`` to ``path`` atomically: a temporary file beside it, then a rename."""
    atomic_write_text(path, text)


def save(doc, path):
    """Write ``doc`` to ``path`` as indented JSON, atomically."""
    write_text(json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n", path)


def load(path):
    """A saved run; ValueError when the file is not a fastconv bench JSON."""
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or "results" not in doc or "environment" not in doc:
        raise ValueError(f"{path} is not a `fastconv bench --json` file")
    return doc
