"""Generated EMBER-like raw records: the real layout without shipping malware features.

EMBER's own data (1.1 M files, several GB) cannot travel with tests, so tests and benchmarks
generate *raw* records -- byte histograms of files of realistic size, strings, headers,
sections, imports -- from seeded, class-dependent distributions and vectorise them with
:func:`sanitize.ember.vectorize`. Every group therefore has its real width, scale and sparsity
(normalised histograms, counts in the thousands, timestamps near 1.5e9, signed hashed buckets),
which is what standardisation and the detectors have to cope with. The two classes overlap
(shared libraries, sizes, sections), so a model does not separate them perfectly.

This is test data, not a model of real malware: no claim is made beyond "EMBER-shaped".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import ember

LIBS = {
    "kernel32.dll": ["CreateFileW", "ReadFile", "WriteFile", "CloseHandle", "GetProcAddress", "LoadLibraryA",
                     "VirtualAlloc", "VirtualProtect", "GetModuleHandleW", "ExitProcess", "Sleep",
                     "CreateProcessA", "GetTickCount", "WriteProcessMemory", "CreateRemoteThread"],
    "user32.dll": ["MessageBoxW", "GetWindowTextW", "ShowWindow", "SetWindowsHookExA", "GetAsyncKeyState",
                   "CreateWindowExW", "DispatchMessageW"],
    "advapi32.dll": ["RegOpenKeyExW", "RegSetValueExA", "RegCloseKey", "OpenProcessToken", "CryptAcquireContextA"],
    "msvcrt.dll": ["malloc", "free", "memcpy", "printf", "strlen", "_initterm"],
    "ws2_32.dll": ["socket", "connect", "send", "recv", "WSAStartup"],
    "wininet.dll": ["InternetOpenA", "InternetOpenUrlA", "InternetReadFile", "HttpSendRequestA"],
    "gdi32.dll": ["BitBlt", "CreateCompatibleDC", "SelectObject", "DeleteObject"],
    "shell32.dll": ["ShellExecuteW", "SHGetFolderPathW"],
    "ole32.dll": ["CoInitialize", "CoCreateInstance"],
    "comctl32.dll": ["InitCommonControlsEx"],
}
# probability that a file imports each library: (benign, malicious)
LIB_PROB = {"kernel32.dll": (0.97, 0.95), "user32.dll": (0.8, 0.6), "advapi32.dll": (0.6, 0.7),
            "msvcrt.dll": (0.5, 0.4), "ws2_32.dll": (0.1, 0.35), "wininet.dll": (0.05, 0.3),
            "gdi32.dll": (0.6, 0.3), "shell32.dll": (0.5, 0.4), "ole32.dll": (0.5, 0.25), "comctl32.dll": (0.4, 0.15)}
SECTIONS = [".text", ".rdata", ".data", ".rsrc", ".reloc", ".pdata", ".idata", ".tls", "UPX0", "UPX1", ".adata"]
PROPS = {"code": ["CNT_CODE", "MEM_EXECUTE", "MEM_READ"], "ro": ["CNT_INITIALIZED_DATA", "MEM_READ"],
         "rw": ["CNT_INITIALIZED_DATA", "MEM_READ", "MEM_WRITE"], "rwx": ["CNT_CODE", "MEM_EXECUTE", "MEM_READ",
                                                                         "MEM_WRITE"]}
COFF_FLAGS = ["EXECUTABLE_IMAGE", "CHARA_32BIT_MACHINE", "LARGE_ADDRESS_AWARE", "DLL", "RELOCS_STRIPPED",
              "DEBUG_STRIPPED", "LINE_NUMS_STRIPPED"]
DLL_FLAGS = ["DYNAMIC_BASE", "NX_COMPAT", "TERMINAL_SERVER_AWARE", "NO_SEH", "HIGH_ENTROPY_VA", "GUARD_CF"]


def _histogram(rng: np.random.Generator, size: int, packed: float) -> list[int]:
    base = np.full(256, 0.3)
    base[0] = 40.0 * (1 - packed) + 2  # zero padding: plain files have lots, packed ones little
    base[0x20:0x7f] += 2.0 * (1 - packed)  # text
    base[[0xff, 0x8b, 0x48, 0xe8, 0x89]] += 6.0 * (1 - packed)  # x86 opcodes
    p = rng.dirichlet(base * 8 + packed * 4)
    return rng.multinomial(size, p).tolist()


def _byteentropy(rng: np.random.Generator, size: int, packed: float) -> list[int]:
    windows = max(1, (size - 2048) // 1024 + 1)
    centre = 8 + 6 * packed + rng.normal(0, 1.5)
    ent = np.exp(-0.5 * ((np.arange(16) - centre) / 2.5) ** 2) + 0.02
    nib = rng.dirichlet(np.full(16, 3.0))
    p = np.outer(ent / ent.sum(), nib).ravel()
    return rng.multinomial(windows * 2048, p).tolist()


def _strings(rng: np.random.Generator, size: int, malicious: bool) -> dict[str, Any]:
    numstrings = int(rng.poisson(max(1.0, size / rng.uniform(150, 600))))
    avlength = float(rng.uniform(7, 22))
    printables = int(numstrings * avlength)
    dist = rng.multinomial(printables, rng.dirichlet(np.full(96, 2.0))).tolist()
    return {"numstrings": numstrings, "avlength": avlength, "printabledist": dist, "printables": printables,
            "entropy": float(rng.uniform(4.5, 6.3)), "paths": int(rng.poisson(1.5 if malicious else 3)),
            "urls": int(rng.poisson(4 if malicious else 2)), "registry": int(rng.poisson(3 if malicious else 0.5)),
            "MZ": int(rng.poisson(2.5 if malicious else 1.2) + 1)}


def _sections(rng: np.random.Generator, size: int, malicious: bool, packed: float) -> dict[str, Any]:
    names = [".text", ".rdata", ".data"]
    extra = [s for s in SECTIONS[3:] if rng.random() < (0.25 if malicious else 0.3)]
    if packed > 0.7:
        names = ["UPX0", "UPX1", ".rsrc"]
    names = names + extra[: rng.integers(0, 4)]
    if malicious and rng.random() < 0.2:
        names.append("".join(rng.choice(list("abcdefgh"), 5)))
    sections = []
    for k, name in enumerate(names):
        kind = "code" if k == 0 or name == "UPX1" else ("rwx" if malicious and rng.random() < 0.15 else
                                                        ("rw" if name in (".data", "UPX0") else "ro"))
        raw = int(size * rng.uniform(0.05, 0.5)) // 512 * 512
        if name == "UPX0":
            raw = 0
        sections.append({"name": name, "size": raw, "entropy": float(np.clip(rng.normal(5 + 2.5 * packed, 0.8), 0, 8)),
                         "vsize": int(raw * rng.uniform(0.9, 1.6)) + 4096, "props": PROPS[kind]})
    return {"entry": sections[0]["name"] if rng.random() < 0.97 else "", "sections": sections}


def _imports(rng: np.random.Generator, malicious: bool) -> dict[str, list[str]]:
    out = {}
    for lib, (pb, pm) in LIB_PROB.items():
        if rng.random() < (pm if malicious else pb):
            funcs = LIBS[lib]
            k = int(rng.integers(1, len(funcs) + 1))
            out[lib.upper() if rng.random() < 0.3 else lib] = sorted(rng.choice(funcs, k, replace=False).tolist())
    return out


def raw_record(rng: np.random.Generator, label: int, index: int) -> dict[str, Any]:
    """One generated raw record (EMBER v2 JSONL schema) with label 0 (benign) or 1 (malicious)."""
    malicious = label == 1
    size = int(np.exp(rng.normal(11.3 if malicious else 11.8, 1.2))) + 1024
    packed = float(np.clip(rng.beta(2, 3) if malicious else rng.beta(1, 6), 0, 1))
    imports = _imports(rng, malicious)
    n_exports = int(rng.poisson(0.5 if malicious else 3)) if rng.random() < 0.3 else 0
    is64 = rng.random() < (0.25 if malicious else 0.45)
    sections = _sections(rng, size, malicious, packed)
    dirs = []
    for name in ember.DATA_DIRECTORY_ORDER:
        present = rng.random() < (0.5 if name in ("IMPORT_TABLE", "IAT", "RESOURCE_TABLE", "BASE_RELOCATION_TABLE")
                                  else 0.12)
        dirs.append({"name": name, "size": int(rng.integers(8, 40000)) if present else 0,
                     "virtual_address": int(rng.integers(4096, 2_000_000)) if present else 0})
    return {
        "sha256": f"{index:064x}", "appeared": "2018-01", "label": int(label),
        "avclass": "synthetic" if malicious else "",
        "histogram": _histogram(rng, size, packed), "byteentropy": _byteentropy(rng, size, packed),
        "strings": _strings(rng, size, malicious),
        "general": {"size": size, "vsize": int(size * rng.uniform(1.0, 2.5)),
                    "has_debug": int(rng.random() < (0.2 if malicious else 0.6)),
                    "exports": n_exports, "imports": sum(len(v) for v in imports.values()),
                    "has_relocations": int(rng.random() < (0.4 if malicious else 0.7)),
                    "has_resources": int(rng.random() < 0.8), "has_signature": int(rng.random() < (0.05 if malicious
                                                                                                   else 0.4)),
                    "has_tls": int(rng.random() < 0.15), "symbols": 0},
        "header": {"coff": {"timestamp": int(rng.uniform(1.1e9, 1.53e9)), "machine": "AMD64" if is64 else "I386",
                            "characteristics": [f for f in COFF_FLAGS if rng.random() < 0.45]},
                   "optional": {"subsystem": "WINDOWS_GUI" if rng.random() < 0.75 else "WINDOWS_CUI",
                                "dll_characteristics": [f for f in DLL_FLAGS if rng.random() < (0.3 if malicious
                                                                                                else 0.6)],
                                "magic": "PE32_PLUS" if is64 else "PE32",
                                "major_image_version": int(rng.integers(0, 3)),
                                "minor_image_version": int(rng.integers(0, 2)),
                                "major_linker_version": int(rng.choice([6, 8, 9, 10, 11, 14])),
                                "minor_linker_version": int(rng.integers(0, 30)),
                                "major_operating_system_version": int(rng.choice([4, 5, 6])),
                                "minor_operating_system_version": int(rng.integers(0, 2)),
                                "major_subsystem_version": int(rng.choice([4, 5, 6])),
                                "minor_subsystem_version": int(rng.integers(0, 2)),
                                "sizeof_code": int(size * rng.uniform(0.1, 0.6)) // 512 * 512,
                                "sizeof_headers": 1024, "sizeof_heap_commit": 4096}},
        "section": sections, "imports": imports,
        "exports": [f"Export{k}" for k in range(n_exports)], "datadirectories": dirs,
    }


def raw_records(n: int, seed: int = 0, malicious_fraction: float = 0.5, unlabelled: int = 0,
                start_index: int = 0) -> list[dict[str, Any]]:
    """``n`` generated records, seeded; the last ``unlabelled`` carry label -1."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < malicious_fraction).astype(int)
    records = [raw_record(rng, int(y), start_index + i) for i, y in enumerate(labels)]
    for r in records[n - unlabelled:] if unlabelled else []:
        r["label"] = -1
    return records


def vectors(n: int, seed: int = 0, malicious_fraction: float = 0.5, version: int = 2
            ) -> tuple[np.ndarray, np.ndarray]:
    """Generated rows (float32, N x 2381 or 2351) and float32 labels, as in X_*.dat / y_*.dat."""
    records = raw_records(n, seed, malicious_fraction)
    for r in records if version == 1 else []:
        r.pop("datadirectories")
    return ember.vectorize(records, version), np.array([r["label"] for r in records], dtype=np.float32)
