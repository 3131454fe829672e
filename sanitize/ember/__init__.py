"""EMBER's feature layout and the vectorisation of its raw (JSONL) features.

EMBER (Anderson & Roth, arXiv 1804.04637) describes every PE file by nine feature groups; the
vectorised form is a float32 row whose columns follow the groups in a fixed order. Feature
version 1 has 2351 columns; version 2 (EMBER 2018) appends 15 data directories x (size, RVA)
for 2381. Where a group lists strings (imports, section names, header flags) the row holds
scikit-learn :class:`~sklearn.feature_extraction.FeatureHasher` buckets with the library's
defaults (signed hashing), so the same raw JSON gives the same vector as the published files.

This module knows the layout (:data:`GROUPS`, :func:`feature_names`, the 17 features the
explanation-guided attack may change) and turns raw records into rows (:func:`vectorize`). The
vectorisation is written from the format's description, group by group, batched over rows: one
hasher call per group for the whole batch instead of one per file.

One quirk of the published vectors is reproduced on purpose: the entry section's name was
hashed character by character (the original passed a bare string where a list of tokens was
expected, which older scikit-learn iterated). scikit-learn >= 1.2 rejects a bare string, so the
characters are passed explicitly; the result is identical.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.feature_extraction import FeatureHasher

from ..errors import SanitizeError


@dataclass(frozen=True)
class Group:
    name: str  # key of the raw JSON record
    dim: int


GROUPS_V1: tuple[Group, ...] = (
    Group("histogram", 256), Group("byteentropy", 256), Group("strings", 104), Group("general", 10),
    Group("header", 62), Group("section", 255), Group("imports", 1280), Group("exports", 128),
)
GROUPS_V2: tuple[Group, ...] = (*GROUPS_V1, Group("datadirectories", 30))
DIMS = {1: sum(g.dim for g in GROUPS_V1), 2: sum(g.dim for g in GROUPS_V2)}  # {1: 2351, 2: 2381}

DATA_DIRECTORY_ORDER = (
    "EXPORT_TABLE", "IMPORT_TABLE", "RESOURCE_TABLE", "EXCEPTION_TABLE", "CERTIFICATE_TABLE",
    "BASE_RELOCATION_TABLE", "DEBUG", "ARCHITECTURE", "GLOBAL_PTR", "TLS_TABLE", "LOAD_CONFIG_TABLE",
    "BOUND_IMPORT", "IAT", "DELAY_IMPORT_DESCRIPTOR", "CLR_RUNTIME_HEADER",
)

GENERAL_KEYS = ("size", "vsize", "has_debug", "exports", "imports", "has_relocations", "has_resources",
                "has_signature", "has_tls", "symbols")
OPTIONAL_KEYS = ("major_image_version", "minor_image_version", "major_linker_version", "minor_linker_version",
                 "major_operating_system_version", "minor_operating_system_version", "major_subsystem_version",
                 "minor_subsystem_version", "sizeof_code", "sizeof_headers", "sizeof_heap_commit")
STRING_COUNTS = ("paths", "urls", "registry", "MZ")


def groups_for(version: int) -> tuple[Group, ...]:
    if version not in DIMS:
        raise SanitizeError(f"EMBER feature version must be 1 or 2, not {version}")
    return GROUPS_V1 if version == 1 else GROUPS_V2


def version_for_dim(dim: int) -> int | None:
    """The feature version whose rows have ``dim`` columns, or None."""
    return {d: v for v, d in DIMS.items()}.get(dim)


def group_slices(version: int = 2) -> dict[str, slice]:
    """Column range of each group, e.g. ``group_slices()["imports"] == slice(1071, 2351)``."""
    out, start = {}, 0
    for g in groups_for(version):
        out[g.name] = slice(start, start + g.dim)
        start += g.dim
    return out


def feature_names(version: int = 2) -> list[str]:
    """A readable name per column (hashed buckets are ``<group>_hash<k>``)."""
    names: list[str] = []
    names += [f"byte_histogram{i}" for i in range(256)]
    names += [f"byte_entropy_histogram{i}" for i in range(256)]
    names += ["numstrings", "avlength", "printables", *[f"printabledist{i}" for i in range(96)],
              "string_entropy", "paths_count", "urls_count", "registry_count", "MZ_count"]
    names += list(GENERAL_KEYS)
    names += ["timestamp", *[f"{k}_hash{i}" for k in ("machine", "characteristics", "subsystem",
                                                       "dll_characteristics", "magic") for i in range(10)]]
    names += list(OPTIONAL_KEYS)
    names += ["num_sections", "num_zero_size_sections", "num_unnamed_sections", "num_read_and_execute_sections",
              "num_write_sections"]
    names += [f"section_{k}_hash{i}" for k in ("size", "entropy", "vsize", "entry_name", "characteristics")
              for i in range(50)]
    names += [f"import_libs_hash{i}" for i in range(256)] + [f"import_funcs_hash{i}" for i in range(1024)]
    names += [f"exports_hash{i}" for i in range(128)]
    if version == 2:
        names += [f"{d.lower()}_{k}" for d in DATA_DIRECTORY_ORDER for k in ("size", "virtual_address")]
    assert len(names) == DIMS[version]
    return names


# The explanation-guided attack (Severi et al., USENIX Security 2021) restricts its "constrained"
# trigger to the 35 non-hashed columns minus the 18 its authors could not change in a real binary
# without breaking it: what remains are counts a dropper can add (strings, empty sections), the
# file size and header version/timestamp fields.
NON_HASHED = ("numstrings", "avlength", "printables", "string_entropy", "paths_count", "urls_count",
              "registry_count", "MZ_count", *GENERAL_KEYS, "timestamp", *OPTIONAL_KEYS, "num_sections",
              "num_zero_size_sections", "num_unnamed_sections", "num_read_and_execute_sections",
              "num_write_sections")
INFEASIBLE = ("avlength", "exports", "has_debug", "has_relocations", "has_resources", "has_signature", "has_tls",
              "imports", "major_subsystem_version", "num_sections", "numstrings", "printables", "sizeof_code",
              "sizeof_headers", "sizeof_heap_commit", "string_entropy", "symbols", "vsize")
FEASIBLE = tuple(n for n in NON_HASHED if n not in INFEASIBLE)


def feature_indices(names: Iterable[str], version: int = 2) -> np.ndarray:
    index = {n: i for i, n in enumerate(feature_names(version))}
    return np.array([index[n] for n in names], dtype=np.int64)


# --- vectorisation ---------------------------------------------------------------------------

def _hash(tokens: list[list[str]], n: int) -> np.ndarray:
    """Signed string hashing exactly as EMBER (scikit-learn defaults), one row per sample."""
    return FeatureHasher(n, input_type="string").transform(tokens).toarray()


def _hash_pairs(pairs: list[list[tuple[str, float]]], n: int) -> np.ndarray:
    return FeatureHasher(n, input_type="pair").transform(pairs).toarray()


def _normalised(counts: list[Sequence[float]], width: int) -> np.ndarray:
    """Counts / their sum in float32 (as EMBER); an all-zero row stays zero instead of NaN."""
    arr = np.asarray(counts, dtype=np.float32).reshape(len(counts), width)
    total = arr.sum(axis=1, keepdims=True)
    return np.divide(arr, total, out=np.zeros_like(arr), where=total > 0)


def _strings(rows: list[dict[str, Any]]) -> np.ndarray:
    out = np.zeros((len(rows), 104), dtype=np.float64)
    for i, s in enumerate(rows):
        divisor = float(s["printables"]) if s["printables"] > 0 else 1.0
        out[i, :3] = (s["numstrings"], s["avlength"], s["printables"])
        out[i, 3:99] = np.asarray(s["printabledist"], dtype=np.float64) / divisor
        out[i, 99] = s["entropy"]
        out[i, 100:] = [s[k] for k in STRING_COUNTS]
    return out


def _general(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([[g[k] for k in GENERAL_KEYS] for g in rows], dtype=np.float64).reshape(len(rows), 10)


def _header(rows: list[dict[str, Any]]) -> np.ndarray:
    coff = [h["coff"] for h in rows]
    opt = [h["optional"] for h in rows]
    return np.hstack([
        np.array([[c["timestamp"]] for c in coff], dtype=np.float64).reshape(len(rows), 1),
        _hash([[c["machine"]] for c in coff], 10),
        _hash([list(c["characteristics"]) for c in coff], 10),
        _hash([[o["subsystem"]] for o in opt], 10),
        _hash([list(o["dll_characteristics"]) for o in opt], 10),
        _hash([[o["magic"]] for o in opt], 10),
        np.array([[o[k] for k in OPTIONAL_KEYS] for o in opt], dtype=np.float64).reshape(len(rows), 11),
    ])


def _section(rows: list[dict[str, Any]]) -> np.ndarray:
    general = np.array([[
        len(r["sections"]),
        sum(1 for s in r["sections"] if s["size"] == 0),
        sum(1 for s in r["sections"] if s["name"] == ""),
        sum(1 for s in r["sections"] if "MEM_READ" in s["props"] and "MEM_EXECUTE" in s["props"]),
        sum(1 for s in r["sections"] if "MEM_WRITE" in s["props"]),
    ] for r in rows], dtype=np.float64).reshape(len(rows), 5)
    by = {k: _hash_pairs([[(s["name"], s[k]) for s in r["sections"]] for r in rows], 50)
          for k in ("size", "entropy", "vsize")}
    entry = _hash([list(r["entry"]) for r in rows], 50)  # character by character, see the module docstring
    props = _hash([[p for s in r["sections"] for p in s["props"] if s["name"] == r["entry"]] for r in rows], 50)
    return np.hstack([general, by["size"], by["entropy"], by["vsize"], entry, props])


def _imports(rows: list[dict[str, list[str]]]) -> np.ndarray:
    libraries = [list({lib.lower() for lib in r}) for r in rows]
    functions = [[lib.lower() + ":" + f for lib, funcs in r.items() for f in funcs] for r in rows]
    return np.hstack([_hash(libraries, 256), _hash(functions, 1024)])


def _data_directories(rows: list[list[dict[str, Any]]]) -> np.ndarray:
    out = np.zeros((len(rows), 30), dtype=np.float64)
    for i, dirs in enumerate(rows):
        for k, d in enumerate(dirs[:15]):  # positional, as EMBER: the PE format's fixed directory order
            out[i, 2 * k] = d["size"]
            out[i, 2 * k + 1] = d["virtual_address"]
    return out


def vectorize(records: Sequence[dict[str, Any]], version: int = 2) -> np.ndarray:
    """Raw EMBER records (parsed JSONL lines) -> float32 rows of ``DIMS[version]`` columns.

    Raises :class:`SanitizeError` naming the first record with a missing or malformed group.
    """
    groups = groups_for(version)
    if not records:
        return np.zeros((0, DIMS[version]), dtype=np.float32)
    builders = {
        "histogram": lambda rs: _normalised(rs, 256),
        "byteentropy": lambda rs: _normalised(rs, 256),
        "strings": _strings, "general": _general, "header": _header, "section": _section,
        "imports": _imports, "exports": lambda rs: _hash([[e[:10000] for e in r] for r in rs], 128),
        "datadirectories": _data_directories,
    }
    parts = []
    for group in groups:
        try:
            column = [r[group.name] for r in records]
            block = builders[group.name](column)
        except SanitizeError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            bad = _first_bad(records, group, builders[group.name])
            raise SanitizeError(f"raw features: record {bad} has a missing or malformed '{group.name}' group "
                                f"({type(exc).__name__}: {exc})") from None
        parts.append(np.asarray(block).reshape(len(records), group.dim).astype(np.float32))
    return np.hstack(parts)


def _first_bad(records: Sequence[dict[str, Any]], group: Group, build) -> int:
    for i, r in enumerate(records):
        try:
            build([r[group.name]])
        except Exception:  # noqa: BLE001 - we only look for the culprit
            return i
    return 0


def record_version(record: dict[str, Any]) -> int:
    """Feature version of a raw record: 2 when it has data directories."""
    return 2 if "datadirectories" in record else 1
