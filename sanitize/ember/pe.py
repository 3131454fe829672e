"""PE files -> EMBER v2 raw features (and vectors), on lief 1.x.

EMBER's stock extractor stops at lief 0.12-era APIs (``lief.bad_format``, ``np.int``, a bare
string given to FeatureHasher); this is a fresh extractor that fills the same raw JSON schema
(feature version 2) from lief 1.x, written from the format's description. Vectors come from
:func:`sanitize.ember.vectorize`, the same code that reads JSONL training sets.

Where a vector can differ from the published EMBER 2018 data (which lief 0.9 produced):

* Byte histogram, byte-entropy histogram and strings are computed from the bytes alone and
  match exactly.
* Enum spellings from lief 1.x are hashed: header characteristics such as
  ``NEED_32BIT_MACHINE`` (lief 0.9: ``CHARA_32BIT_MACHINE``) land in other hash buckets; machine,
  subsystem, magic, section flags and DLL characteristics use the same names as 0.9 for the
  common values, but any renamed member moves its bucket.
* ``entry``: the section containing the entry point's RVA (lief >= 0.12 semantics, as EMBER's
  last release); lief 0.9 looked the entry point up as a file offset, which can name another
  section for packed files.
* Counts depending on lief's parsing (imports, exports, symbols, virtual size, has_* flags)
  follow lief 1.x, which parses malformed tables more leniently (and more correctly) than 0.9.
* A file lief cannot parse as PE is *skipped with a reason* instead of being given all-zero
  header features (the original kept such files with empty structure).
* An empty file yields zero histograms instead of NaN.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import ember

MAX_BYTES = 256 * 1024 * 1024  # larger files are skipped (EMBER's PE files are at most a few hundred MB)
_STRINGS = re.compile(rb"[\x20-\x7f]{5,}")
_PATHS = re.compile(rb"c:\\", re.IGNORECASE)
_URLS = re.compile(rb"https?://", re.IGNORECASE)
_REGISTRY = re.compile(rb"HKEY_")
_MZ = re.compile(rb"MZ")


class NotPE(Exception):
    """A file that cannot be described as a PE file (the message is the reason)."""


def _name(value: Any) -> str:
    """lief enum member -> EMBER's spelling (the member name, without the enum prefix)."""
    name = getattr(value, "name", None)
    return str(name) if name else str(value).split(".")[-1]


def byte_histogram(data: np.ndarray) -> list[int]:
    return np.bincount(data, minlength=256).tolist()


def byte_entropy_histogram(data: np.ndarray, window: int = 2048, step: int = 1024) -> list[int]:
    """16 entropy bins x 16 high-nibble bins over sliding windows (Saxe & Berlin 2015), as EMBER."""
    out = np.zeros((16, 16), dtype=np.int64)
    if len(data) < window:
        blocks = [data]
    else:
        starts = range(0, len(data) - window + 1, step)
        blocks = (data[s:s + window] for s in starts)
    for block in blocks:
        counts = np.bincount(block >> 4, minlength=16)
        p = counts[counts > 0].astype(np.float32) / window
        entropy = float(np.sum(-p * np.log2(p))) * 2  # 16 coarse bins carry half the bits of 256
        out[min(int(entropy * 2), 15)] += counts
    return out.ravel().tolist()


def strings_features(raw: bytes) -> dict[str, Any]:
    found = _STRINGS.findall(raw)
    if found:
        joined = np.frombuffer(b"".join(found), dtype=np.uint8)
        counts = np.bincount(joined - 0x20, minlength=96)
        p = counts[counts > 0].astype(np.float32) / counts.sum()
        entropy, avlength, printables = float(np.sum(-p * np.log2(p))), sum(map(len, found)) / len(found), \
            int(counts.sum())
    else:
        counts, entropy, avlength, printables = np.zeros(96, dtype=np.int64), 0.0, 0, 0
    return {"numstrings": len(found), "avlength": avlength, "printabledist": counts.tolist(), "printables": printables,
            "entropy": entropy, "paths": len(_PATHS.findall(raw)), "urls": len(_URLS.findall(raw)),
            "registry": len(_REGISTRY.findall(raw)), "MZ": len(_MZ.findall(raw))}


def _parse(path: Path):
    import lief

    lief.logging.disable()
    try:
        binary = lief.PE.parse(str(path))
    except Exception as exc:  # noqa: BLE001 - lief raises assorted types on hostile input
        raise NotPE(f"lief cannot parse it ({type(exc).__name__})") from None
    if binary is None:
        raise NotPE("not a PE file (lief found no valid PE headers)")
    return binary


def _entry_section(binary) -> str:
    section = binary.section_from_rva(binary.entrypoint - binary.imagebase)
    if section is not None:
        return section.name
    for s in binary.sections:  # bad entry point: the first executable section
        if any(_name(c) == "MEM_EXECUTE" for c in s.characteristics_lists):
            return s.name
    return ""


def _structure(binary, size: int) -> dict[str, Any]:
    header, opt = binary.header, binary.optional_header
    imports: dict[str, list[str]] = {}
    for lib in binary.imports:
        names = imports.setdefault(lib.name, [])
        names.extend(f"ordinal{e.ordinal}" if e.is_ordinal else e.name[:10000] for e in lib.entries)
    exports = [f.name[:10000] for f in binary.exported_functions]
    return {
        "general": {"size": size, "vsize": binary.virtual_size, "has_debug": int(binary.has_debug),
                    "exports": len(exports), "imports": len(binary.imported_functions),
                    "has_relocations": int(binary.has_relocations), "has_resources": int(binary.has_resources),
                    "has_signature": int(binary.has_signatures), "has_tls": int(binary.has_tls),
                    "symbols": len(binary.symbols)},
        "header": {
            "coff": {"timestamp": header.time_date_stamps, "machine": _name(header.machine),
                     "characteristics": [_name(c) for c in header.characteristics_list]},
            "optional": {"subsystem": _name(opt.subsystem),
                         "dll_characteristics": [_name(c) for c in opt.dll_characteristics_lists],
                         "magic": _name(opt.magic), **{k: getattr(opt, k) for k in ember.OPTIONAL_KEYS}},
        },
        "section": {"entry": _entry_section(binary),
                    "sections": [{"name": s.name, "size": s.size, "entropy": s.entropy, "vsize": s.virtual_size,
                                  "props": [_name(c) for c in s.characteristics_lists]} for s in binary.sections]},
        "imports": imports,
        "exports": exports,
        "datadirectories": [{"name": _name(d.type), "size": d.size, "virtual_address": d.rva}
                            for d in binary.data_directories],
    }


def raw_features(path: str | Path, label: int = -1) -> dict[str, Any]:
    """EMBER v2 raw features of one PE file; raises :class:`NotPE` with the reason to skip it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise NotPE(f"larger than {MAX_BYTES // 2**20} MiB")
        raw = path.read_bytes()
    except OSError as exc:
        raise NotPE(f"cannot read ({exc.strerror or exc})") from None
    if raw[:2] != b"MZ":
        raise NotPE("not a PE file (no MZ header)")
    binary = _parse(path)
    data = np.frombuffer(raw, dtype=np.uint8)
    record = {"sha256": hashlib.sha256(raw).hexdigest(), "appeared": "", "label": label, "avclass": "",
              "histogram": byte_histogram(data), "byteentropy": byte_entropy_histogram(data),
              "strings": strings_features(raw)}
    try:
        record.update(_structure(binary, len(raw)))
    except Exception as exc:  # noqa: BLE001 - lief objects of a damaged file can fail on access
        raise NotPE(f"damaged PE structure ({type(exc).__name__}: {exc})") from None
    _check_finite(record)
    return record


def _check_finite(record: dict[str, Any]) -> None:
    for s in record["section"]["sections"]:
        if not math.isfinite(s["entropy"]):
            s["entropy"] = 0.0


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (or ``root`` itself), sorted, hidden entries skipped."""
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            yield path
