"""Summarize a py-spy raw (collapsed stacks) profile: self and inclusive share per function.

    .venv/bin/python -m benchmarks.profile_summary /tmp/server.txt [--top 25]

Lines look like `frame;frame;frame COUNT`, each frame `function (file:line)`. Lines are
dropped from the frame names so one function is one row.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    return _LINE.sub(")", frame.strip())


def summarize(text: str) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        total += n
        self_time[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    return total, self_time, inclusive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    total, self_time, inclusive = summarize(Path(args.path).read_text())
    print(f"{total} samples")
    print("self %   function")
    for name, n in self_time.most_common(args.top):
        print(f"{n / total * 100:5.1f}   {name}")
    print("incl %   function")
    for name, n in inclusive.most_common(args.top):
        print(f"{n / total * 100:5.1f}   {name}")


if __name__ == "__main__":
    main()
