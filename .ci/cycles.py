#!/usr/bin/env python3
"""Fails when two modules of one crate use each other (an import cycle).

For each crate's src/ (binaries under src/bin/ excluded), a module is a file (`a/b.rs` or
`a/b/mod.rs` is `a::b`); module A uses module B when A's code (comments and its `mod tests` left
out) names `crate::B…`, or `super::b` for a sibling. A parent and its own children are not a
cycle (a parent declares them). Prints every pair found.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules(src):
    out = {}
    for d, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(d, f)
            rel = os.path.relpath(path, src)[:-3]
            if rel.startswith("bin" + os.sep) or rel in ("lib", "main"):
                continue
            name = rel.replace(os.sep + "mod", "").replace(os.sep, "::")
            if name == "mod":
                continue
            with open(path, encoding="utf-8") as fh:
                code = fh.read().split("#[cfg(test)]\nmod tests")[0]
            out[name] = re.sub(r"//[^\n]*", "", code)
    return out


def edges(mods):
    names = sorted(mods, key=len, reverse=True)
    found = set()
    for a, code in mods.items():
        for ref in re.findall(r"crate::([a-z_0-9]+(?:::[a-z_0-9]+)?)", code):
            for b in names:
                if ref == b or ref.startswith(b + "::"):
                    if b != a and not a.startswith(b + "::") and not b.startswith(a + "::"):
                        found.add((a, b))
                    break
        parent = "::".join(a.split("::")[:-1])
        for ref in re.findall(r"super::([a-z_0-9]+)", code):
            b = f"{parent}::{ref}" if parent else ref
            if b in mods and b != a:
                found.add((a, b))
    return found


def main():
    bad = []
    for crate in ["formats", "runtime", "trainer", "testkit", "benches", "tests"]:
        src = os.path.join(ROOT, crate, "src")
        if not os.path.isdir(src):
            continue
        e = edges(modules(src))
        bad += [(crate, a, b) for a, b in sorted(e) if (b, a) in e and a < b]
    for crate, a, b in bad:
        print(f"import cycle in {crate}: {a} <-> {b}")
    if bad:
        sys.exit(1)
    print("no import cycles between modules")


if __name__ == "__main__":
    main()
