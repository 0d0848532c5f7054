#!/usr/bin/env python3
"""Fails if the modules of a library crate import each other in a circle.

    scripts/check-module-cycles.py crates/lethe-coordinator [crates/lethe-cli ...]

The module tree is read from `src/lib.rs` (or `src/main.rs` for a binary-only crate) by its
`mod name;` declarations. An edge A -> B is a path in A that names B: `crate::b::...`,
`super::...`, `self::...`, or a `use` of a child module by its bare name. A path ends at the
deepest module it names, so `crate::gate::principal::Caller` is an edge to `gate::principal`
and not to `gate`. Test modules (`#[cfg(test)] mod ... { }`), comments and string literals are
not read. Declaring a child (`mod b;`) is not an edge.
"""

import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip(source: str) -> str:
    """The source without comments, string and char literals, and test modules."""
    out = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if source.startswith("//", i):
            i = source.find("\n", i)
            i = n if i < 0 else i
        elif source.startswith("/*", i):
            j = source.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', source[i:]) and not re.match(r"\w", source[i - 1 : i]):
            hashes = re.match(r"r(#*)\"", source[i:]).group(1)
            end = source.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            j = i + 1
            while j < n and source[j] != '"':
                j += 2 if source[j] == "\\" else 1
            i = j + 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", source[i:]):
            i += len(re.match(r"'(\\.[^']*|[^\\'])'", source[i:]).group(0))
            out.append("' '")
        else:
            out.append(c)
            i += 1
    text = "".join(out)
    return drop_test_modules(text)


def drop_test_modules(text: str) -> str:
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s*)?mod\s+" + IDENT + r"\s*\{")
    while True:
        match = pattern.search(text)
        if not match:
            return text
        depth, j = 1, match.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        text = text[: match.start()] + text[j:]


class Module:
    def __init__(self, path: tuple, file: Path):
        self.path = path
        self.file = file
        self.text = strip(file.read_text())
        self.children = {}

    @property
    def name(self) -> str:
        return "::".join(self.path) or "crate"


def child_file(parent: Path, name: str, is_root_like: bool) -> Path:
    base = parent.parent if is_root_like else parent.parent / parent.stem
    for candidate in (base / f"{name}.rs", base / name / "mod.rs"):
        if candidate.exists():
            return candidate
    raise SystemExit(f"{parent}: cannot find the file of `mod {name};`")


def load(root: Path) -> dict:
    modules = {}

    def visit(path: tuple, file: Path):
        module = Module(path, file)
        modules[path] = module
        root_like = file.name in ("lib.rs", "main.rs", "mod.rs")
        for name in re.findall(r"(?:^|[;}\s])(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", module.text):
            module.children[name] = path + (name,)
            visit(path + (name,), child_file(file, name, root_like))

    visit((), root)
    return modules


def use_trees(text: str):
    """Every path in a `use` item, its braces expanded."""
    for match in re.finditer(r"\buse\s+([^;]+);", text):
        yield from expand(re.sub(r"\s+", "", match.group(1)))


def expand(tree: str):
    depth = 0
    for i, c in enumerate(tree):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if c == "{" and depth == 1:
            prefix, inner = tree[:i], tree[i + 1 : tree.rindex("}")]
            for part in split_top(inner):
                yield from expand(prefix + part)
            return
    yield tree


def split_top(inner: str):
    depth, start = 0, 0
    for i, c in enumerate(inner):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if c == "," and depth == 0:
            yield inner[start:i]
            start = i + 1
    if inner[start:]:
        yield inner[start:]


def resolve(modules: dict, current: tuple, segments: list):
    """The deepest module a path names, or None for a path outside the crate."""
    head, rest = segments[0], segments[1:]
    if head == "crate":
        at = ()
    elif head == "self":
        at = current
    elif head == "super":
        at = current[:-1]
        while rest and rest[0] == "super":
            at, rest = at[:-1], rest[1:]
    elif head in modules[current].children:
        at, rest = modules[current].children[head], rest
    else:
        return None
    for segment in rest:
        child = modules[at].children.get(segment)
        if child is None:
            break
        at = child
    return at


def edges_of(modules: dict, module: Module) -> set:
    paths = [p.split("::") for p in use_trees(module.text)]
    body = re.sub(r"\buse\s+[^;]+;", "", module.text)
    heads = "|".join(["crate", "super", "self", *module.children])
    paths += [
        m.group(0).split("::")
        for m in re.finditer(r"(?<![\w:])(?:" + heads + r")(?:::" + IDENT + ")+", body)
    ]
    targets = set()
    for segments in paths:
        segments = [s for s in segments if s and s != "*"]
        if not segments:
            continue
        target = resolve(modules, module.path, segments)
        if target is not None and target != module.path:
            targets.add(target)
    return targets


def cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            connect(v)
    return found


def one_cycle(graph: dict, component: list) -> list:
    """A shortest circle through the component's first module, for the message."""
    members, start = set(component), component[0]
    paths, frontier = {start: [start]}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return paths[v] + [start]
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return component


def check(crate: Path) -> bool:
    src = crate / "src"
    root = src / "lib.rs" if (src / "lib.rs").exists() else src / "main.rs"
    modules = load(root)
    graph = {path: edges_of(modules, module) for path, module in modules.items()}
    found = cycles(graph)
    name = lambda path: modules[path].name
    for component in found:
        circle = " -> ".join(name(p) for p in one_cycle(graph, component))
        print(f"{crate}: modules import each other in a circle: {circle}", file=sys.stderr)
    if not found:
        count = sum(len(targets) for targets in graph.values())
        print(f"{crate}: {len(modules)} modules, {count} imports between them, no cycle")
    return not found


if __name__ == "__main__":
    crates = [Path(arg) for arg in sys.argv[1:]] or [Path("crates/lethe-coordinator")]
    sys.exit(0 if all([check(crate) for crate in crates]) else 1)
