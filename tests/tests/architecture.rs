//! The data plane's shape, checked on its source: data flows one way through the folders
//! (`config` → `model` → `serve` → `upstream`, over `codec`, `body` and `observe`), so a module
//! imports only from its own stage, an earlier one or one underneath; no two modules import
//! each other, directly or round a circle; files and functions (of the controller too) stay
//! short enough to read.
//! docs/architecture.md has the map this enforces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The proxy's top-level modules, by stage: a module may import from a stage with a lower
/// number (or its own folder), never from a higher one.
const STAGES: &[(&str, u8)] = &[
    ("codec", 0),
    ("observe", 0),
    ("workers", 0),
    ("limits", 0),
    ("body", 1),
    ("upstream", 2),
    ("model", 3),
    ("shared", 4),
    ("config", 5),
    ("serve", 6),
    // Fed by config (through a trait main provides), reads the routing state, renders
    // answers as serve does.
    ("kernel", 7),
    ("admin", 8),
    ("fuzz", 9),
];

/// Longest file, in lines before its unit tests.
const MAX_FILE_LINES: usize = 600;
/// Longest function, in lines.
const MAX_FUNCTION_LINES: usize = 120;

struct Module {
    path: PathBuf,
    /// Code before the unit tests, comments removed.
    code: String,
    /// Lines before the unit tests.
    lines: usize,
}

fn source_dir(component: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../{component}/src"))
}

/// Every module of the proxy's library, by its path (`serve::h1::request`).
fn modules() -> BTreeMap<String, Module> {
    modules_of("data-plane")
}

/// Every module of a crate's library (`data-plane`, `control-plane`), files of unit tests
/// (`tests.rs`, `*_tests.rs`) left out.
fn modules_of(component: &str) -> BTreeMap<String, Module> {
    let root = source_dir(component);
    let mut found = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            if path.extension().is_none_or(|e| e != "rs")
                || file == "tests.rs"
                || file.ends_with("_tests.rs")
            {
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            match parts.last().map(String::as_str) {
                Some("mod") | Some("lib") => {
                    parts.pop();
                }
                _ => {}
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let before_tests = text
                .split("\n#[cfg(test)]\nmod ")
                .next()
                .unwrap_or_default();
            let code: String = before_tests
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            found.insert(
                parts.join("::"),
                Module {
                    path,
                    code,
                    lines: before_tests.lines().count(),
                },
            );
        }
    }
    found
}

/// The paths a `use` tree names: `a::{b, c::{d, e}}` → a::b, a::c::d, a::c::e.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.split_whitespace().collect();
    let Some(open) = tree.find('{') else {
        return vec![tree.trim_end_matches("::*").to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|i| !i.is_empty())
        .flat_map(|item| {
            let item = if item == "self" { "" } else { item };
            expand(item)
                .into_iter()
                .map(|p| format!("{prefix}{p}").trim_end_matches("::").to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The module a path starting at `from` names: the longest known module prefix.
fn resolve(path: &str, from: &str, is_folder: bool, known: &BTreeSet<String>) -> Option<String> {
    let mut segments: Vec<&str> = Vec::new();
    let mut rest = path;
    let mut base: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    if let Some(r) = rest.strip_prefix("crate::") {
        base.clear();
        rest = r;
    } else {
        // `super` of a folder's mod.rs is the folder's parent; of a file, its folder.
        if !is_folder {
            base.pop();
        }
        let mut supers = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
            supers += 1;
        }
        if supers == 0 {
            return None; // an external crate or std
        }
        for _ in 1..supers {
            base.pop();
        }
        if is_folder {
            base.pop();
        }
    }
    segments.extend(base);
    segments.extend(rest.split("::"));
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|candidate| known.contains(candidate))
}

/// Which modules each module imports (`pub use` re-exports left out: they are a folder's
/// facade, not a dependency of its code).
fn imports(modules: &BTreeMap<String, Module>) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    // The binary (`main`) is the edge where everything is wired together: it may use anything.
    for (name, module) in modules.iter().filter(|(name, _)| *name != "main") {
        let is_folder = module.path.ends_with("mod.rs") || module.path.ends_with("lib.rs");
        let mut paths = Vec::new();
        for statement in module.code.split(';') {
            let statement = statement.trim_start();
            if let Some(tree) = statement.strip_prefix("use ") {
                paths.extend(expand(tree));
            }
        }
        // Paths written inline in code, `crate::serve::general::handle(...)`.
        for (i, _) in module.code.match_indices("crate::") {
            let path: String = module.code[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            paths.push(path);
        }
        let targets: BTreeSet<String> = paths
            .iter()
            .filter_map(|p| resolve(p, name, is_folder, &known))
            .filter(|t| t != name)
            .collect();
        graph.insert(name.clone(), targets);
    }
    graph
}

fn stage(module: &str) -> Option<u8> {
    let top = module.split("::").next().unwrap_or_default();
    STAGES.iter().find(|(s, _)| *s == top).map(|(_, n)| *n)
}

#[test]
fn every_module_belongs_to_a_stage() {
    let strays: Vec<String> = modules()
        .into_keys()
        .filter(|m| !m.is_empty() && m != "main" && stage(m).is_none())
        .collect();
    assert!(
        strays.is_empty(),
        "modules outside the stages (add them to a folder, and to STAGES and \
         docs/architecture.md if they are a new stage): {strays:?}"
    );
}

#[test]
fn no_module_imports_a_later_stage() {
    let mut wrong = Vec::new();
    for (from, targets) in imports(&modules()) {
        let (Some(from_stage), Some(from_top)) = (stage(&from), from.split("::").next()) else {
            continue;
        };
        for to in targets {
            let same_folder = to.split("::").next() == Some(from_top);
            if let Some(to_stage) = stage(&to)
                && !same_folder
                && to_stage >= from_stage
            {
                wrong.push(format!(
                    "{from} (stage {from_stage}) imports {to} (stage {to_stage})"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn no_import_circles() {
    let graph = imports(&modules());
    // Tarjan's strongly connected components.
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        circles: Vec<Vec<&'g str>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.circles.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        circles: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    assert!(
        walk.circles.is_empty(),
        "modules that import each other: {:?}",
        walk.circles
    );
}

#[test]
fn files_and_functions_stay_short() {
    let mut long = Vec::new();
    let proxy = modules()
        .into_iter()
        .map(|(n, m)| (format!("data-plane: {n}"), m));
    let controller = modules_of("control-plane")
        .into_iter()
        .map(|(n, m)| (format!("control-plane: {n}"), m));
    for (name, module) in proxy.chain(controller) {
        if module.lines > MAX_FILE_LINES {
            long.push(format!("{name}: {} lines", module.lines));
        }
        // rustfmt's layout: a function ends at the first `}` at its own indentation.
        let lines: Vec<&str> = module.code.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            let is_fn = [
                "fn ",
                "pub fn ",
                "async fn ",
                "pub async fn ",
                "pub(crate) fn ",
            ]
            .iter()
            .chain(&[
                "pub(super) fn ",
                "pub(crate) async fn ",
                "pub(super) async fn ",
            ])
            .any(|p| trimmed.starts_with(p));
            if !is_fn || trimmed.ends_with(';') {
                continue;
            }
            let close = format!("{}}}", " ".repeat(indent));
            if let Some(end) = lines[i..].iter().position(|l| *l == close)
                && end + 1 > MAX_FUNCTION_LINES
            {
                let signature: String = trimmed.chars().take(60).collect();
                long.push(format!("{name}: {signature}... {} lines", end + 1));
            }
        }
    }
    assert!(long.is_empty(), "{long:#?}");
}

#[test]
fn the_checks_see_imports() {
    // The graph is only as good as its parsing: the known edges must be there.
    let graph = imports(&modules());
    let has = |from: &str, to: &str| graph.get(from).is_some_and(|t| t.contains(to));
    assert!(
        has("serve::accept", "serve::general"),
        "{:?}",
        graph.get("serve::accept")
    );
    assert!(has("serve::accept", "config::listeners"));
    assert!(has("serve::h1::request", "model::rule"));
    assert!(has("upstream::send", "upstream::raw"));
    assert!(
        has("serve::http2::conn", "serve::general"),
        "inline crate:: paths count"
    );
    assert_eq!(
        expand("a::{b, c::{d, e}, self}"),
        ["a::b", "a::c::d", "a::c::e", "a"]
    );
}
