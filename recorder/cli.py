"""`python -m recorder`: open sealed recordings.

    python -m recorder decrypt RECORDING_DIR OUT_DIR --key-file KEY
        every sealed file of the recording, decrypted into OUT_DIR (its name without
        `.sealed`), and the manifest; a file cut short (a crash) gives its complete chunks and
        is reported "truncated". Exit 1 when a file fails authentication (tampered, wrong key).

The key file is the node's `--recording-key-file` (CONSULT_RECORDING_KEY_FILE when not given).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence

from .keys import FileKeyStore, KeyError_
from .manifest import MANIFEST
from .sealed import SUFFIX, SealError, key_id_of, unseal


def decrypt(directory: str, out: str, keys: FileKeyStore) -> list[tuple[str, str]]:
    """Decrypt a recording; returns (file, "complete" | "truncated") per sealed file."""
    os.makedirs(out, exist_ok=True)
    results = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name == MANIFEST:
            shutil.copyfile(path, os.path.join(out, name))
            continue
        if not name.endswith(SUFFIX):
            continue
        key = keys.get(key_id_of(path))
        opened = unseal(path, key)
        with open(os.path.join(out, name[: -len(SUFFIX)]), "wb") as f:
            f.write(opened.data)
        results.append((name[: -len(SUFFIX)], "complete" if opened.complete else "truncated"))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recorder", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dec = commands.add_parser("decrypt", help="decrypt a recording's files")
    dec.add_argument("directory")
    dec.add_argument("out")
    dec.add_argument("--key-file", default=os.environ.get("CONSULT_RECORDING_KEY_FILE", ""))
    args = parser.parse_args(argv)
    try:
        results = decrypt(args.directory, args.out, FileKeyStore(args.key_file))
    except (KeyError_, SealError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 1
    for name, state in results:
        print(f"{name}\t{state}")
    return 0
