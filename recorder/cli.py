"""`python -m recorder`: open sealed recordings.

    python -m recorder decrypt RECORDING_DIR OUT_DIR --key-file KEY
        every sealed file of the recording, decrypted into OUT_DIR (its name without
        `.sealed`), and the manifest; a file cut short (a crash) gives its complete chunks and
        is reported "truncated". Exit 1 when a file fails authentication (tampered, wrong key).

    python -m recorder export RECORDING_DIR OUT.mp4 --key-file KEY [--height 360] [--fps 30]
        one MP4 to watch: the video tracks side by side, the audio tracks mixed, on the wall
        clock of the manifest (this one transcodes: H264 and AAC).

The key file is the node's `--recording-key-file` (CONSULT_RECORDING_KEY_FILE when not given).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence

from .export import export
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
    key_default = os.environ.get("CONSULT_RECORDING_KEY_FILE", "")
    dec.add_argument("--key-file", default=key_default)
    exp = commands.add_parser("export", help="one MP4: video side by side, audio mixed")
    exp.add_argument("directory")
    exp.add_argument("out")
    exp.add_argument("--key-file", default=key_default)
    exp.add_argument("--height", type=int, default=360)
    exp.add_argument("--fps", type=int, default=30)
    args = parser.parse_args(argv)
    keys = FileKeyStore(args.key_file)
    try:
        if args.command == "export":
            length = export(args.directory, args.out, keys, height=args.height, fps=args.fps)
            print(f"{args.out}\t{length:.2f} s")
            return 0
        results = decrypt(args.directory, args.out, keys)
    except (KeyError_, SealError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 1
    for name, state in results:
        print(f"{name}\t{state}")
    return 0
