#!/usr/bin/env python3
"""Checks that every crate's modules import one way: no import circle between the top-level
modules of a crate (`crate::a` using `crate::b` while `crate::b` uses `crate::a`).

Unit-test modules (`#[cfg(test)] mod`, `#[cfg(all(test, ...))] mod`) are left out: tests may use any module. A reference is
any `crate::NAME` path (in `use` lines and inline), any `super::NAME` that
climbs to the crate root, and any `crate::Item` re-exported from the crate root (resolved
through the root's `pub use` lines). References inside one top-level module are ignored: a
module may be organised as it likes inside.

Prints each crate's modules in layers (bottom first) and exits 1 if any crate has a circle,
naming the modules in it and one file per edge. Usage: scripts/check-layers.py [CRATE_DIR...]
(default: every workspace member).
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PATH = re.compile(r"\bcrate::(\w+)")
USE_GROUP = re.compile(r"\buse\s+crate::\{([^;]*)\}", re.S)
ROOT_REEXPORT = re.compile(r"^pub use (\w+)::(\{[^;]*\}|\w+);", re.M)


def members():
    text = (ROOT / "Cargo.toml").read_text()
    block = re.search(r"members\s*=\s*\[(.*?)\]", text, re.S).group(1)
    return [ROOT] + [ROOT / m for m in re.findall(r'"([^"]+)"', block)]


def top_module(src, path):
    """The top-level module a file belongs to ('' for the crate root file)."""
    rel = path.relative_to(src).parts
    if len(rel) == 1:
        name = rel[0][:-3]
        return "" if name in ("lib", "main") else name
    return rel[0]


def strip_comments(text):
    """The code without comments and without its unit tests (`#[cfg(test)] mod ...`)."""
    text = re.split(r"#\[cfg\((?:all\()?test\b[^\]]*\]\s*mod\b", text)[0]
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def root_items(src):
    """Names re-exported at the crate root, mapped to the module they come from."""
    lib = src / "lib.rs"
    if not lib.exists():
        return {}
    items = {}
    for module, names in ROOT_REEXPORT.findall(strip_comments(lib.read_text())):
        for name in re.findall(r"\w+", names):
            items[name] = module
    return items


def edges_of(crate):
    src = crate / "src"
    modules = {top_module(src, p) for p in src.rglob("*.rs")} - {""}
    reexports = root_items(src)
    edges = {}
    for path in sorted(src.rglob("*.rs")):
        here = top_module(src, path)
        if not here:
            continue
        text = strip_comments(path.read_text())
        names = PATH.findall(text)
        for group in USE_GROUP.findall(text):
            names += re.findall(r"(?:^|,)\s*(\w+)", group)
        for name in names:
            target = name if name in modules else reexports.get(name)
            if target and target != here:
                edges.setdefault((here, target), path.relative_to(ROOT))
    return modules, edges


def cycles(modules, edges):
    """Strongly connected components with more than one module (Tarjan)."""
    graph = {m: sorted(b for (a, b) in edges if a == m) for m in modules}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for m in sorted(modules):
        if m not in index:
            visit(m)
    return out


def layers(modules, edges):
    level = {}

    def depth(m, seen=()):
        if m not in level:
            below = [b for (a, b) in edges if a == m and b not in seen]
            level[m] = 1 + max((depth(b, seen + (m,)) for b in below), default=-1)
        return level[m]

    for m in modules:
        depth(m)
    return [sorted(m for m in modules if level[m] == i) for i in range(max(level.values()) + 1)]


def main():
    crates = [pathlib.Path(a).resolve() for a in sys.argv[1:]] or members()
    failed = False
    for crate in crates:
        modules, edges = edges_of(crate)
        if not modules:
            continue
        circles = cycles(modules, edges)
        print(f"{crate.name}:")
        for members_ in circles:
            failed = True
            print(f"  CIRCLE: {' <-> '.join(members_)}")
            for (a, b), path in sorted(edges.items()):
                if a in members_ and b in members_:
                    print(f"    {a} -> {b}  ({path})")
        if not circles:
            for i, layer in enumerate(layers(modules, edges)):
                print(f"  layer {i}: {' '.join(layer)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
