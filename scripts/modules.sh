#!/usr/bin/env bash
# The engine's module graph, drawn by cargo-modules (installed here when missing), checked for
# import cycles and layer violations, and printed as module → modules it uses.
#
#   scripts/modules.sh            check and print the graph of ms1-actors
#   scripts/modules.sh --dot      the module graph as Graphviz dot (e.g. | dot -Tsvg > m.svg)
#
# cargo-modules reports which item uses which; an item belongs to its module, so that is
# folded into "module A uses module B". A module using what its parent declares is not an edge
# (the parent is its namespace). Exit status 1 when there is a cycle or a lower layer imports a
# higher one. `cargo test -p ms1-actors --test layers` checks the same rules from the sources,
# without cargo-modules, in every CI run.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

if ! cargo modules --version >/dev/null 2>&1; then
  echo "installing cargo-modules 0.27 (the last release for rustc < 1.98; a few minutes)…" >&2
  cargo install cargo-modules --version 0.27.0 --locked --quiet
fi
need_packages python3:python3

dot=$(mktemp)
trap 'rm -f "$dot"' EXIT
cargo modules dependencies --package ms1-actors --lib --no-externs --no-sysroot --no-owns >"$dot"

python3 - "$dot" "${1:-}" <<'PY'
import re, sys

text = open(sys.argv[1]).read()
want_dot = sys.argv[2] == "--dot"
kinds = dict(re.findall(r'^\s*"([^"]+)" \[label="([^"|]*)\|', text, re.M))
modules = {n for n, k in kinds.items() if k.endswith("mod") or k == "crate"}

def module_of(item):
    while item not in modules:
        item = item.rsplit("::", 1)[0]
    return item

def name(m):
    return m.split("::", 1)[1] if "::" in m else "crate"

edges = {}
for a, b in re.findall(r'^\s*"([^"]+)" -> "([^"]+)" \[label="uses"', text, re.M):
    ma, mb = module_of(a), module_of(b)
    if ma == mb or ma.startswith(mb + "::"):
        continue  # within a module, or naming what a parent declares
    edges.setdefault(ma, set()).add(mb)

if want_dot:
    print("digraph modules {\n  rankdir=LR; node [shape=box, fontname=monospace];")
    for a in sorted(edges):
        for b in sorted(edges[a]):
            print(f'  "{name(a)}" -> "{name(b)}";')
    print("}")
    sys.exit(0)

GROUND = {"clock", "health", "memory", "messages", "metrics", "retry", "secret", "settings",
          "shutdown", "supervision"}

def layer(m):
    top = name(m).split("::")[0]
    if top == "crate":
        return "root"
    if top in GROUND:
        return "ground"
    if top in ("model", "store", "clients"):
        return top
    return "stage"  # sources, pipeline, after_delivery, control (and any actor module)

ALLOWED = {
    "ground": {"ground"},
    "model": {"ground", "model"},
    "store": {"ground", "model", "store"},
    "clients": {"ground", "model", "clients"},
    "stage": {"ground", "model", "store", "clients", "stage"},
    "root": {"ground", "model", "store", "clients", "stage", "root"},
}

problems = []
for a in sorted(edges):
    for b in sorted(edges[a]):
        if layer(b) not in ALLOWED[layer(a)]:
            problems.append(f"layer: {name(a)} ({layer(a)}) uses {name(b)} ({layer(b)})")

# Cycles: depth-first search, a back edge closes one.
state, stack = {}, []
def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(edges.get(m, ())):
        if state.get(n) == "open":
            cycle = stack[stack.index(n):] + [n]
            problems.append("cycle: " + " → ".join(name(c) for c in cycle))
        elif n not in state:
            visit(n)
    stack.pop()
    state[m] = "done"
for m in sorted(edges):
    if m not in state:
        visit(m)

for a in sorted(edges, key=name):
    print(f"{name(a):32} → {', '.join(sorted(name(b) for b in edges[a]))}")
print(f"\n{len(modules)} modules, {sum(len(v) for v in edges.values())} module-to-module uses")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print("no import cycle; no lower layer uses a higher one")
PY
