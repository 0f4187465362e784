//! The engine's shape, checked from its sources (`cargo test -p ms1-actors --test layers`):
//!
//! - **Layers.** The shared ground (settings, clock, metrics, health, …) imports only itself;
//!   `model/` only the ground; `store/` and `clients/` only the ground and the model — never an
//!   actor, and never each other. The stages (`sources/`, `pipeline/`, `after_delivery/`,
//!   `control/`) stand on all of them.
//! - **No import cycle** between modules. A module naming something its parent declares is not
//!   an edge (the parent is its namespace) — unless the parent only re-exports it, then the edge
//!   goes to where it is declared; every other `crate::`, `super::`, `self::` or child-relative
//!   path is an edge, and the graph of them must have no cycle.
//! - **No large files**: none over [`MAX_LINES`] lines in the workspace's sources.
//!
//! `scripts/modules.sh` checks the same rules on the graph cargo-modules draws (from
//! rust-analyzer's name resolution); this test keeps them true in CI without installing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest source file, in lines.
const MAX_LINES: usize = 800;

/// The shared ground every layer may use.
const GROUND: &[&str] = &[
    "clock",
    "health",
    "memory",
    "messages",
    "metrics",
    "retry",
    "secret",
    "settings",
    "shutdown",
    "supervision",
];
const STAGES: &[&str] = &["sources", "pipeline", "after_delivery", "control"];

type Module = Vec<String>;

struct Source {
    module: Module,
    path: PathBuf,
    text: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn module_of(path: &Path) -> Module {
    let rel = path.strip_prefix(src_dir()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<Source> {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| Source {
            module: module_of(&path),
            text: std::fs::read_to_string(&path).unwrap(),
            path,
        })
        .collect()
}

/// The code of a file without its tests (a trailing `#[cfg(test)]` module) and comments.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap().trim();
        return vec![path.to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| {
            if p == "self" {
                prefix.trim_end_matches("::").to_string()
            } else {
                format!("{prefix}{p}")
            }
        })
        .collect()
}

/// Every path a file names: its `use` trees and the paths in its code.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    // `use` declarations (also `pub use`, `pub(crate) use`), up to their `;`.
    while let Some(at) = find_use(rest) {
        let body = &rest[at..];
        let end = body.find(';').unwrap_or(body.len());
        out.extend(expand(&body[4..end]));
        rest = &body[end..];
    }
    // Paths written in the code: `crate::a::b`, `super::x`, `self::y`.
    let bytes = code.as_bytes();
    for anchor in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(anchor) {
            let start = from + i;
            from = start + anchor.len();
            let ident_before = start > 0 && {
                let b = bytes[start - 1];
                b.is_ascii_alphanumeric() || b == b'_' || b == b':'
            };
            if ident_before {
                continue;
            }
            let end = code[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| start + e);
            out.push(code[start..end].trim_end_matches(':').to_string());
        }
    }
    out
}

/// The names a file re-exports (`pub use a::b::C;` → `C` → `a::b::C`).
fn reexports(code: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = find_use(rest) {
        let body = &rest[at..];
        let end = body.find(';').unwrap_or(body.len());
        let line_start = rest[..at].rfind('\n').map_or(0, |n| n + 1);
        if rest[line_start..at].trim().starts_with("pub") {
            for path in expand(&body[4..end]) {
                let name = path.rsplit("::").next().unwrap_or_default().to_string();
                out.push((name, path));
            }
        }
        rest = &body[end..];
    }
    out
}

fn find_use(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find("use ") {
        let at = from + i;
        let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
        let before = text[line_start..at].trim();
        if before.is_empty() || before == "pub" || before.starts_with("pub(") {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

type Reexports = BTreeMap<(Module, String), String>;

/// The module a path leads into (the deepest module it names, or where an item a module
/// re-exports is declared), from `current`.
fn resolve(
    path: &str,
    current: &Module,
    modules: &BTreeSet<Module>,
    reexported: &Reexports,
) -> Option<Module> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let (mut base, rest): (Module, &[&str]) = match segs.first().copied() {
        Some("crate") => (vec![], &segs[1..]),
        Some("self") => (current.clone(), &segs[1..]),
        Some("super") => {
            let ups = segs.iter().take_while(|s| **s == "super").count();
            let mut m = current.clone();
            for _ in 0..ups {
                m.pop()?;
            }
            (m, &segs[ups..])
        }
        Some(first) => {
            // A child module named relative to the current one; anything else is another crate.
            let mut child = current.clone();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            (current.clone(), &segs[..])
        }
        None => return None,
    };
    for seg in rest {
        let mut next = base.clone();
        next.push(seg.to_string());
        if !modules.contains(&next) {
            if let Some(target) = reexported.get(&(base.clone(), seg.to_string())) {
                if target != path {
                    return resolve(target, &base, modules, reexported);
                }
            }
            break;
        }
        base = next;
    }
    Some(base)
}

fn is_ancestor(a: &Module, b: &Module) -> bool {
    a.len() < b.len() && b.starts_with(a)
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// `module → modules it uses`, and the offending paths that name an item through the crate
/// root's re-exports (which would hide the real edge).
fn graph(sources: &[Source]) -> (BTreeMap<Module, BTreeSet<Module>>, Vec<String>) {
    let modules: BTreeSet<Module> = sources.iter().map(|s| s.module.clone()).collect();
    let mut reexported = Reexports::new();
    for s in sources {
        for (name, path) in reexports(&code(&s.text)) {
            reexported.insert((s.module.clone(), name), path);
        }
    }
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut via_root = Vec::new();
    for s in sources {
        for path in paths(&code(&s.text)) {
            let Some(target) = resolve(&path, &s.module, &modules, &reexported) else {
                continue;
            };
            if target.is_empty() && path.starts_with("crate::") && !s.module.is_empty() {
                via_root.push(format!("{}: {path}", name(&s.module)));
            }
            if target == s.module || is_ancestor(&target, &s.module) {
                continue;
            }
            edges.entry(s.module.clone()).or_default().insert(target);
        }
    }
    (edges, via_root)
}

#[test]
fn the_parser_sees_use_trees_and_paths() {
    let found = paths(
        "use crate::{health::Health, metrics as m};\npub(crate) use super::x::{self, Y};\n\
         let a = crate::store::schema::inbound::KEY;\n",
    );
    for want in [
        "crate::health::Health",
        "crate::metrics",
        "super::x",
        "super::x::Y",
        "crate::store::schema::inbound::KEY",
    ] {
        assert!(found.iter().any(|p| p == want), "{want} not in {found:?}");
    }
}

#[test]
fn items_are_named_by_their_module_not_through_the_crate_root() {
    let (_, via_root) = graph(&sources());
    assert!(
        via_root.is_empty(),
        "name the module (crate::settings::Settings, not crate::Settings) so the layering is \
         visible:\n{}",
        via_root.join("\n")
    );
}

#[test]
fn lower_layers_never_import_from_higher_ones() {
    let (edges, _) = graph(&sources());
    let layer = |m: &Module| -> &'static str {
        match m.first().map(String::as_str) {
            None => "root",
            Some(top) if GROUND.contains(&top) => "ground",
            Some("model") => "model",
            Some("store") => "store",
            Some("clients") => "clients",
            Some(top) if STAGES.contains(&top) => "stage",
            Some(top) => panic!("module {top} is in no layer: add it to GROUND or STAGES"),
        }
    };
    let allowed = |from: &str, to: &str| match from {
        "ground" => to == "ground",
        "model" => matches!(to, "ground" | "model"),
        "store" => matches!(to, "ground" | "model" | "store"),
        "clients" => matches!(to, "ground" | "model" | "clients"),
        "stage" => to != "root",
        _ => true,
    };
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            if !allowed(layer(from), layer(to)) {
                wrong.push(format!(
                    "{} ({}) imports {} ({})",
                    name(from),
                    layer(from),
                    name(to),
                    layer(to)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_import_cycle_between_modules() {
    let (edges, _) = graph(&sources());
    // Depth-first search; a back edge closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
        cycles: &mut Vec<String>,
    ) {
        marks.insert(m.clone(), Mark::Open);
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            match marks.get(next) {
                Some(Mark::Open) => {
                    let at = stack.iter().position(|s| s == next).unwrap();
                    let mut cycle: Vec<String> = stack[at..].iter().map(name).collect();
                    cycle.push(name(next));
                    cycles.push(cycle.join(" → "));
                }
                Some(Mark::Done) => {}
                None => visit(next, edges, marks, stack, cycles),
            }
        }
        stack.pop();
        marks.insert(m.clone(), Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut cycles = Vec::new();
    for m in edges.keys() {
        if !marks.contains_key(m) {
            visit(m, &edges, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_check_finds_a_planted_cycle() {
    let planted = [
        ("a.rs", "use crate::b::X;\n"),
        ("b.rs", "pub fn f() { crate::a::g() }\n"),
    ];
    let sources: Vec<Source> = planted
        .iter()
        .map(|(file, text)| {
            let path = src_dir().join(file);
            Source {
                module: module_of(&path),
                path,
                text: text.to_string(),
            }
        })
        .collect();
    let (edges, _) = graph(&sources);
    let a = vec!["a".to_string()];
    let b = vec!["b".to_string()];
    assert!(
        edges[&a].contains(&b) && edges[&b].contains(&a),
        "{edges:?}"
    );
}

#[test]
fn no_source_file_is_over_the_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in ["actors/src", "src", "sim/src"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{rel}: {lines} lines"))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these by concept:\n{}",
        long.join("\n")
    );
    for s in sources() {
        assert!(s.path.exists());
    }
}
