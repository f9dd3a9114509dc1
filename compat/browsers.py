"""Browser configurations: which binary, which engine, which flags and prefs, and why.

A browser entry is a name, an engine, a version and a binary. Adding one is a config entry
(docs/compat.md), in compat/versions.json (the versions of Debian's archive that `compat`
fetches itself, compat/packages.py) or in a JSON file given with `--browsers`:

    {"browsers": [{"name": "chromiumbeta", "engine": "chrome",
                   "executable": "/opt/chromium-beta/chrome", "args": ["--foo"]},
                  {"name": "firefox140", "engine": "firefox",
                   "package": "firefox-esr", "version": "140.12.0esr-1~deb12u1"}]}

`engine` is `chrome` (driven over CDP) or `firefox` (WebDriver BiDi); the engine's base
flags or prefs below are always applied, `args`/`prefs` add to them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compat import packages

# Headless Chromium with fake capture devices, permission granted without a prompt,
# loopback ICE candidates (the namespace holds only `lo`) and no background traffic.
CHROME_ARGS = (
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--mute-audio",
)

# Firefox ESR: loopback ICE candidates, fake camera and microphone, permissions granted,
# and none of its own network services (updates, telemetry, safe browsing, captive portal).
FIREFOX_PREFS: dict[str, Any] = {
    "media.peerconnection.ice.loopback": True,
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "permissions.default.camera": 1,
    "permissions.default.microphone": 1,
    "media.autoplay.default": 0,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "app.update.enabled": False,
    "app.update.auto": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "extensions.update.enabled": False,
    "browser.search.update": False,
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-gmpopenh264.autoupdate": False,
}

ENGINES = ("chrome", "firefox")
# The current browser of each engine: Debian's installed one (the older versions pair with it).
CURRENT = {"chrome": "chromium", "firefox": "firefox"}
VERSIONS_FILE = Path(__file__).resolve().parent / "versions.json"


@dataclass(frozen=True)
class BrowserSpec:
    name: str
    engine: str
    executable: str
    args: tuple[str, ...] = ()
    prefs: dict[str, Any] = field(default_factory=dict)
    version: str = ""  # the Debian version (fetched ones, or the installed package's)
    package: str = ""  # a Debian package fetched by version (compat/packages.py), or ""

    def launch_args(self) -> list[str]:
        return [*CHROME_ARGS, *self.args] if self.engine == "chrome" else list(self.args)

    def launch_prefs(self) -> dict[str, Any]:
        return {**FIREFOX_PREFS, **self.prefs} if self.engine == "firefox" else {}

    @property
    def fetched(self) -> bool:
        return bool(self.package)

    def missing(self) -> str | None:
        """Why this browser cannot start here, or None."""
        if Path(self.executable).is_file() or shutil.which(self.executable):
            return None
        if self.fetched:
            return f"{self.package} {self.version} is not fetched (`compat browsers --fetch`)"
        return f"{self.executable} is not installed"

    def describe(self) -> dict[str, str]:
        return {
            "name": self.name,
            "engine": self.engine,
            "version": self.version,
            "executable": self.executable,
            "package": self.package,
        }


DEFAULT_BROWSERS = {
    "chromium": BrowserSpec("chromium", "chrome", "/usr/bin/chromium"),
    "firefox": BrowserSpec("firefox", "firefox", "/usr/bin/firefox-esr"),
}
SYSTEM_PACKAGES = {"chromium": "chromium", "firefox": "firefox-esr"}

# The non-browser participant (signaling.client.ConsultClient on aiortc).
AIORTC = "aiortc"


def load_browsers(
    path: Path | None, versions: Path | None = VERSIONS_FILE
) -> dict[str, BrowserSpec]:
    """The installed browsers, the versions of compat/versions.json, and (adding to or
    replacing them) the entries of a JSON config file."""
    specs = {
        name: BrowserSpec(
            spec.name,
            spec.engine,
            spec.executable,
            version=packages.installed_version(SYSTEM_PACKAGES[name]) or "",
        )
        for name, spec in DEFAULT_BROWSERS.items()
    }
    for p in (versions, path):
        if p is not None:
            specs.update(_load_file(p))
    return specs


def _load_file(path: Path) -> dict[str, BrowserSpec]:
    specs: dict[str, BrowserSpec] = {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read browser config {path}: {exc}") from exc
    entries = data.get("browsers") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected {{'browsers': [...]}}")
    for e in entries:
        if not isinstance(e, dict):
            raise ValueError(f"{path}: each browser is an object")
        name, engine, exe = e.get("name"), e.get("engine"), e.get("executable")
        if not isinstance(name, str) or not name or name == AIORTC or "-" in name:
            raise ValueError(f"{path}: bad browser name {name!r} (no '-', not 'aiortc')")
        if engine not in ENGINES:
            raise ValueError(f"{path}: {name}: engine must be one of {ENGINES}")
        package, version = e.get("package", ""), e.get("version", "")
        if package or not exe:
            if package not in packages.LAYOUT or not isinstance(version, str) or not version:
                raise ValueError(
                    f"{path}: {name}: executable is required, or a package "
                    f"({sorted(packages.LAYOUT)}) and its version"
                )
            exe = str(packages.binary_of(package, version))
        if not isinstance(exe, str) or not exe:
            raise ValueError(f"{path}: {name}: executable is required")
        if not isinstance(version, str):
            raise ValueError(f"{path}: {name}: version must be a string")
        args = e.get("args", [])
        prefs = e.get("prefs", {})
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError(f"{path}: {name}: args must be a list of strings")
        if not isinstance(prefs, dict):
            raise ValueError(f"{path}: {name}: prefs must be an object")
        specs[name] = BrowserSpec(
            name, engine, exe, tuple(args), dict(prefs), version=version, package=package
        )
    return specs


def default_pairs(browsers: list[str]) -> list[tuple[str, str]]:
    """Every browser pair (each with itself too) and each browser with the aiortc peer."""
    pairs: list[tuple[str, str]] = []
    for i, a in enumerate(browsers):
        for b in browsers[i:]:
            pairs.append((a, b))
    # The mixed pair first: it is the one CI runs.
    pairs.sort(key=lambda p: p[0] == p[1])
    pairs += [(b, AIORTC) for b in browsers]
    return pairs


def full_pairs(specs: dict[str, BrowserSpec]) -> list[tuple[str, str]]:
    """`--full`: every pair of the current browsers (default_pairs), then each other version
    against the current browser of the other engine (a Chrome version as the doctor, a
    Firefox version as the patient, like the CI pair chromium-firefox)."""
    current = [n for n in specs if n in CURRENT.values() or not specs[n].fetched]
    pairs = default_pairs(current)
    for name, spec in specs.items():
        if name in current:
            continue
        if spec.engine == "chrome":
            pairs.append((name, CURRENT["firefox"]))
        else:
            pairs.append((CURRENT["chrome"], name))
    return pairs


def parse_pair(text: str, known: set[str]) -> tuple[str, str]:
    a, sep, b = text.partition("-")
    if not sep or a not in known or (b not in known and b != AIORTC):
        raise ValueError(
            f"bad pair {text!r}: use BROWSER-BROWSER or BROWSER-aiortc ({sorted(known)})"
        )
    return a, b
