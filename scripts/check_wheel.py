"""Checks a built wheel for the platform it claims, with the LLVM binary tools.

usage: python scripts/check_wheel.py PLATFORM WHEEL

PLATFORM is one of the names in ``PLATFORMS`` below (the targets of
scripts/build-wheels.sh). The checks, for every platform:

- the file name and the ``Tag:`` lines of ``*.dist-info/WHEEL`` are ``cp310-abi3-<tag>``;
- the wheel holds exactly one compiled file, the extension module ``bptt/_core`` with the
  platform's suffix, and the Python package next to it;
- the binary's format and machine (``llvm-readobj --file-headers``).

and per format:

- Mach-O: the minimum macOS version of the load commands is the one in the tag; the
  libraries it links are system ones (``/usr/lib/``, ``/System/``); every symbol it does
  not take from them (flat namespace: looked up in the process at load time) is a Python
  C-API symbol (``_Py*``), so the module needs nothing but the interpreter and the OS;
- PE: the imported DLLs are Windows system DLLs and ``python3.dll`` (the stable ABI,
  not a versioned ``python3X.dll``);
- ELF: left to ``auditwheel show`` (run by build-wheels.sh), which knows the manylinux
  policies.

Prints one line per check; exits non-zero on the first failure. Needs ``llvm-readobj``
and ``llvm-objdump`` on PATH (Debian: ``llvm``); ``LLVM_SUFFIX`` (e.g. ``-14``) picks
versioned names.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Platform:
    tag: str  # wheel platform tag; manylinux wheels carry the legacy alias too
    module: str  # path of the extension module inside the wheel
    file_format: str  # llvm-readobj's "Format:" line
    machine: str  # llvm-readobj's "Arch:" line
    min_os: str | None = None  # Mach-O only


PLATFORMS = {
    "linux-x86_64": Platform(
        "manylinux_2_17_x86_64", "bptt/_core.abi3.so", "elf64-x86-64", "x86_64"
    ),
    "linux-aarch64": Platform(
        "manylinux_2_17_aarch64", "bptt/_core.abi3.so", "elf64-littleaarch64", "aarch64"
    ),
    "macos-arm64": Platform(
        "macosx_11_0_arm64", "bptt/_core.abi3.so", "Mach-O arm64", "aarch64", "11.0"
    ),
    "macos-x86_64": Platform(
        "macosx_10_12_x86_64", "bptt/_core.abi3.so", "Mach-O 64-bit x86-64", "x86_64", "10.12"
    ),
    "windows-x86_64": Platform("win_amd64", "bptt/_core.pyd", "COFF-x86-64", "x86_64"),
}

# DLLs every supported Windows (10 and later) has in System32, which the Rust standard
# library, the MinGW runtime and mimalloc may import.
WINDOWS_SYSTEM_DLLS = {
    "advapi32.dll",
    "bcrypt.dll",
    "bcryptprimitives.dll",
    "kernel32.dll",
    "msvcrt.dll",
    "ntdll.dll",
    "ole32.dll",
    "psapi.dll",
    "shell32.dll",
    "synchronization.dll",
    "user32.dll",
    "userenv.dll",
    "ws2_32.dll",
}


def fail(msg: str) -> None:
    print(f"check_wheel.py: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def ok(msg: str) -> None:
    print(f"  ok  {msg}")


def tool(name: str, *args: str) -> str:
    exe = name + os.environ.get("LLVM_SUFFIX", "")
    try:
        run = subprocess.run([exe, *args], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        fail(f"{exe} not found (Debian: apt-get install llvm)")
        raise
    return run.stdout


def check_archive(wheel: Path, plat: Platform, out: Path) -> Path:
    m = re.fullmatch(r"bptt-([^-]+)-cp310-abi3-(.+)\.whl", wheel.name)
    if m is None:
        fail(f"{wheel.name} is not an abi3 (cp310-abi3) wheel of bptt")
        raise SystemExit(1)
    tags = m.group(2).split(".")
    if plat.tag not in tags:
        fail(f"{wheel.name}: platform tags {tags}, expected {plat.tag}")
    ok(f"file name: version {m.group(1)}, tags cp310-abi3-{'.'.join(tags)}")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = [n for n in names if n.endswith(".dist-info/WHEEL")]
        if len(meta) != 1:
            fail(f"expected one .dist-info/WHEEL, found {meta}")
        lines = z.read(meta[0]).decode().splitlines()
        got = sorted(line.split(":", 1)[1].strip() for line in lines if line.startswith("Tag:"))
        want = sorted(f"cp310-abi3-{t}" for t in tags)
        if got != want:
            fail(f"WHEEL tags {got}, expected {want}")
        if "Root-Is-Purelib: false" not in lines:
            fail("WHEEL does not say Root-Is-Purelib: false")
        ok(f"WHEEL metadata: Tag {', '.join(got)}; Root-Is-Purelib: false")
        compiled = [n for n in names if re.search(r"\.(so|pyd|dll|dylib)$", n)]
        if compiled != [plat.module]:
            fail(f"compiled files {compiled}, expected only {plat.module}")
        for need in ("bptt/__init__.py", "bptt/_core.pyi", "bptt/py.typed"):
            if need not in names:
                fail(f"{need} is missing")
        ok(f"one compiled file, {plat.module}, beside the Python package")
        return Path(z.extract(plat.module, out))


def check_headers(binary: Path, plat: Platform) -> None:
    text = tool("llvm-readobj", "--file-headers", str(binary))
    fmt = re.search(r"^Format: (.+)$", text, re.MULTILINE)
    arch = re.search(r"^Arch: (.+)$", text, re.MULTILINE)
    got = (fmt.group(1) if fmt else "?", arch.group(1) if arch else "?")
    if got != (plat.file_format, plat.machine):
        fail(f"binary is {got}, expected {(plat.file_format, plat.machine)}")
    ok(f"binary format {got[0]}, machine {got[1]}")


def check_macho(binary: Path, plat: Platform) -> None:
    heads = tool("llvm-objdump", "--macho", "--private-headers", str(binary))
    # LC_BUILD_VERSION gives "minos X.Y"; the older LC_VERSION_MIN_MACOSX gives "version X.Y".
    m = re.search(r"cmd LC_BUILD_VERSION.*?minos (\S+)", heads, re.DOTALL) or re.search(
        r"cmd LC_VERSION_MIN_MACOSX.*?version (\S+)", heads, re.DOTALL
    )
    if m is None or m.group(1) != plat.min_os:
        fail(f"minimum macOS {m.group(1) if m else None}, expected {plat.min_os}")
    ok(f"minimum macOS {m.group(1)} (load commands) matches the tag")
    own = tool("llvm-objdump", "--macho", "--dylib-id", str(binary)).splitlines()[1:]
    dylibs = tool("llvm-objdump", "--macho", "--dylibs-used", str(binary)).splitlines()[1:]
    # --dylibs-used lists the module's own install name (LC_ID_DYLIB) too.
    libs = [line.split(" (")[0].strip() for line in dylibs if line.strip()]
    libs = [lib for lib in libs if lib not in {o.strip() for o in own}]
    bad = [lib for lib in libs if not lib.startswith(("/usr/lib/", "/System/Library/"))]
    if bad or not libs:
        fail(f"links {libs}: not only system libraries")
    ok(f"links only system libraries: {', '.join(libs)}")
    binds = tool(
        "llvm-objdump", "--macho", "--bind", "--lazy-bind", "--weak-bind", str(binary)
    )
    flat = sorted({
        line.split()[-1]
        for line in binds.splitlines()
        if "flat-namespace" in line
    })
    other = [s for s in flat if not s.startswith(("_Py", "__Py"))]
    if other or not flat:
        fail(f"symbols looked up at load time that are not Python's: {other[:20]}")
    ok(f"{len(flat)} symbols from the interpreter, all Python C API (_Py*); the rest "
       "from the system libraries above")


def check_pe(binary: Path) -> None:
    text = tool("llvm-readobj", "--coff-imports", str(binary))
    dlls = [d.lower() for d in re.findall(r"^\s*Name: (\S+\.dll)$", text, re.MULTILINE | re.IGNORECASE)]
    seen = sorted(set(dlls))
    if "python3.dll" not in seen:
        fail(f"does not import python3.dll (the stable ABI): {seen}")
    other = [d for d in seen if d != "python3.dll" and d not in WINDOWS_SYSTEM_DLLS
             and not d.startswith("api-ms-win-")]
    if other:
        fail(f"imports DLLs that are neither system DLLs nor python3.dll: {other}")
    blocks = re.split(r"^Import \{", text, flags=re.MULTILINE)
    py = next((b for b in blocks if re.search(r"Name: python3\.dll", b, re.IGNORECASE)), "")
    nsym = len(re.findall(r"Symbol: ", py))
    ok(f"imports {', '.join(seen)} ({nsym} symbols from python3.dll)")


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in PLATFORMS:
        fail(f"usage: check_wheel.py {{{','.join(PLATFORMS)}}} WHEEL")
    plat = PLATFORMS[sys.argv[1]]
    wheel = Path(sys.argv[2])
    print(f"== {wheel.name} ({wheel.stat().st_size} bytes) for {sys.argv[1]}")
    with tempfile.TemporaryDirectory() as tmp:
        binary = check_archive(wheel, plat, Path(tmp))
        check_headers(binary, plat)
        if plat.file_format.startswith("Mach-O"):
            check_macho(binary, plat)
        elif plat.file_format.startswith("COFF"):
            check_pe(binary)


if __name__ == "__main__":
    main()
