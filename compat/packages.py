"""Browser versions from Debian's archive, side by side, never touching the system's browser.

A browser entry that names a Debian `package` and `version` (compat/versions.json, or a
`--browsers` file) is fetched with `apt-get download PACKAGE=VERSION` (plus the packages of
the same source that the binary needs, e.g. chromium-common) and unpacked with `dpkg -x` into
its own cache folder, `CACHE/PACKAGE/VERSION/`. Dependencies that are not installed on this
machine are fetched and unpacked the same way into `CACHE/PACKAGE/VERSION/deps/`, and the
browser is started through a small wrapper that puts their libraries on LD_LIBRARY_PATH.
Nothing is installed, and nothing is downloaded from anywhere but Debian's archive (apt).

Fetching needs the network, so `compat run` and `compat browsers --fetch` do it before entering
the loopback-only namespace. A version that cannot be fetched or unpacked, or whose binary
lacks a library, gets a reason instead of a binary: its cells fail with it, the run goes on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# What each package needs besides itself (same version) and where its binary is.
LAYOUT: dict[str, tuple[tuple[str, ...], str]] = {
    "chromium": (("chromium-common",), "usr/lib/chromium/chromium"),
    "firefox-esr": ((), "usr/lib/firefox-esr/firefox-esr"),
}
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compat"
APT_TIMEOUT_S = 600
_DEP = re.compile(r"^\s*([a-z0-9][a-z0-9.+-]*)")


class FetchError(Exception):
    pass


@dataclass(frozen=True)
class Fetched:
    executable: Path  # the wrapper when dependencies were unpacked, else the binary
    folder: Path


def cache_dir() -> Path:
    return Path(os.environ.get("COMPAT_BROWSER_CACHE") or DEFAULT_CACHE / "browsers")


def folder_of(package: str, version: str, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / package / version.replace("/", "_").replace(":", "_")


def binary_of(package: str, version: str, cache: Path | None = None) -> Path:
    if package not in LAYOUT:
        raise FetchError(f"unknown package {package!r} (known: {sorted(LAYOUT)})")
    folder = folder_of(package, version, cache)
    wrapper = folder / "run.sh"
    return wrapper if wrapper.exists() else folder / "root" / LAYOUT[package][1]


def installed_version(package: str) -> str | None:
    """The version of an installed Debian package, or None."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Version}", package],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    status, _, version = out.stdout.partition(" ")
    return version.strip() if out.returncode == 0 and status.startswith("ii") else None


def archive_versions(package: str) -> list[str]:
    """The versions apt can fetch (`apt-cache madison`), newest first."""
    try:
        out = subprocess.run(
            ["apt-cache", "madison", package], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    versions = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 2 and parts[0] == package and parts[1] not in versions:
            versions.append(parts[1])
    return versions


def _update_lists() -> None:
    """`apt-get update` (Debian's archive only knows what it serves once its lists are here)."""
    try:
        subprocess.run(
            ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=600", "update"],
            capture_output=True,
            timeout=APT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"apt-get update: {exc}") from exc


def _download(names: list[str], into: Path) -> list[Path]:
    """`apt-get download` each NAME=VERSION into a folder; the .deb files."""
    try:
        out = subprocess.run(
            ["apt-get", "download", *names],
            cwd=into,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"apt-get download {' '.join(names)}: {exc}") from exc
    if out.returncode != 0:
        err = " ".join(line for line in out.stderr.splitlines() if line.startswith("E:"))
        raise FetchError(f"apt-get download {' '.join(names)}: {err or out.stderr[-300:]}")
    return sorted(into.glob("*.deb"))


def _unpack(deb: Path, root: Path) -> None:
    try:
        out = subprocess.run(
            ["dpkg", "-x", str(deb), str(root)], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"dpkg -x {deb.name}: {exc}") from exc
    if out.returncode != 0:
        raise FetchError(f"dpkg -x {deb.name}: {out.stderr.strip()[-300:]}")


def _depends(deb: Path) -> list[str]:
    """The first alternative of each Depends entry of a .deb."""
    out = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True, timeout=60
    )
    names = []
    for entry in out.stdout.split(","):
        m = _DEP.match(entry.split("|")[0])
        if m:
            names.append(m.group(1))
    return names


def missing_libraries(binary: Path, library_path: list[Path]) -> list[str]:
    """Shared libraries `ldd` cannot find for the binary (its own folder counts)."""
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": ":".join(str(p) for p in [binary.parent, *library_path]),
    }
    try:
        out = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, timeout=60, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"ldd: {exc}"]
    return sorted({line.split()[0] for line in out.stdout.splitlines() if "not found" in line})


def fetch(package: str, version: str, cache: Path | None = None) -> Fetched:
    """The browser PACKAGE=VERSION unpacked in its own cache folder (fetched if not yet)."""
    if package not in LAYOUT:
        raise FetchError(f"unknown package {package!r} (known: {sorted(LAYOUT)})")
    companions, rel = LAYOUT[package]
    folder = folder_of(package, version, cache)
    done = folder / ".complete"
    binary = folder / "root" / rel
    if not done.exists():
        if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
            raise FetchError("apt-get and dpkg are needed to fetch browser versions")
        if folder.exists():
            shutil.rmtree(folder)  # an earlier fetch broke off: start again
        folder.mkdir(parents=True)
        try:
            _unpack_all(package, version, companions, folder, binary, rel)
        except (FetchError, OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(folder, ignore_errors=True)  # nothing half-unpacked is left
            raise exc if isinstance(exc, FetchError) else FetchError(str(exc)) from exc
    libdirs = [p for p in (folder / "deps" / "usr/lib/x86_64-linux-gnu",) if p.is_dir()]
    lacking = missing_libraries(binary, libdirs)
    lacking = [lib for lib in lacking if not (binary.parent / lib).exists()]
    if lacking:
        raise FetchError(f"{package} {version} lacks libraries: {', '.join(lacking)}")
    return Fetched(executable=binary_of(package, version, cache), folder=folder)


def _unpack_all(
    package: str,
    version: str,
    companions: tuple[str, ...],
    folder: Path,
    binary: Path,
    rel: str,
) -> None:
    """Download PACKAGE=VERSION (and its companions, and dependencies this machine lacks)
    and unpack them into `folder`; `.complete` marks a finished fetch."""
    if not archive_versions(package):
        _update_lists()  # a machine whose apt lists were never fetched (or were cleaned)
    with tempfile.TemporaryDirectory(prefix="compat-debs-") as tmp:
        debs = _download([f"{p}={version}" for p in (package, *companions)], Path(tmp))
        depends: set[str] = set()
        for deb in debs:
            _unpack(deb, folder / "root")
            depends |= set(_depends(deb))
        absent = sorted(d for d in depends - {package, *companions} if installed_version(d) is None)
        if absent:  # runtime libraries this machine lacks, from Debian's archive too
            deps = Path(tmp) / "deps"
            deps.mkdir()
            for deb in _download(absent, deps):
                _unpack(deb, folder / "deps")
    if not binary.is_file():
        raise FetchError(f"{package} {version}: no {rel} in the package")
    deps_dirs = (folder / "deps" / "usr/lib/x86_64-linux-gnu", folder / "deps" / "lib")
    libdirs = [d for d in deps_dirs if d.is_dir()]
    if libdirs:
        wrapper = folder / "run.sh"
        path = ":".join(str(d) for d in libdirs)
        keep = "${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        wrapper.write_text(
            f'#!/bin/sh\nexport LD_LIBRARY_PATH="{path}{keep}"\nexec "{binary}" "$@"\n'
        )
        wrapper.chmod(0o755)
    (folder / ".complete").write_text(version + "\n")
