//! The workspace's layout rules, checked on the source: no import cycle between modules of
//! any crate, the node's pure core imports nothing but the config and itself and does no
//! I/O, and crates depend node -> gossip -> geo, never back. A module is one file (`a/b.rs`
//! or `a/b/mod.rs` is module `a::b`); an edge is a `crate::` (or `super::`) path in its
//! code, test modules left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, as (module path, text).
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files
        .into_iter()
        .filter(|f| !f.ends_with("main.rs") && !f.starts_with(src.join("bin")))
        .map(|f| {
            let rel = f.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            (parts.join("::"), std::fs::read_to_string(&f).unwrap())
        })
        .collect()
}

/// The code of a file without comments, string literals and its `#[cfg(test)]` modules.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<usize> = None;
    let mut depth = 0usize;
    let mut pending_test = false;
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let trimmed = line.trim();
        if trimmed.starts_with("#[cfg(test)]") {
            pending_test = true;
            continue;
        }
        if pending_test && skip_depth.is_none() && trimmed.starts_with("mod ") {
            skip_depth = Some(depth);
        }
        if !trimmed.is_empty() {
            pending_test = false;
        }
        for ch in line.chars() {
            match ch {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        match skip_depth {
            Some(d) if depth <= d && line.contains('}') => skip_depth = None,
            Some(_) => {}
            None => {
                // String literals may name paths that are not imports.
                let mut in_str = false;
                let mut prev = ' ';
                for ch in line.chars() {
                    if ch == '"' && prev != '\\' {
                        in_str = !in_str;
                    } else if !in_str {
                        out.push(ch);
                    }
                    prev = ch;
                }
                out.push('\n');
            }
        }
    }
    out
}

/// The paths named after `crate::` (or `super::`, resolved against `module`), with
/// `crate::{a::X, b::{Y}}` groups expanded.
fn paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let own: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let (base, skip): (Vec<String>, usize) = if rest.starts_with("crate::") {
            (Vec::new(), 7)
        } else if rest.starts_with("super::") {
            let parent = own[..own.len().saturating_sub(1)]
                .iter()
                .map(|s| s.to_string());
            (parent.collect(), 7)
        } else {
            i += 1;
            continue;
        };
        // Not part of a longer identifier (`my_crate::`).
        if i > 0 && (bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_') {
            i += 1;
            continue;
        }
        i += skip;
        let start = i;
        expand(&bytes, &mut i, base, &mut out);
        if i == start {
            i += 1;
        }
    }
    out
}

fn expand(bytes: &[char], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        if *i < bytes.len() && bytes[*i] == '{' {
            *i += 1;
            loop {
                while *i < bytes.len() && (bytes[*i].is_whitespace() || bytes[*i] == ',') {
                    *i += 1;
                }
                if *i >= bytes.len() || bytes[*i] == '}' {
                    *i += 1;
                    return;
                }
                let before = *i;
                expand(bytes, i, path.clone(), out);
                // Skip an `as name` up to the next item.
                while *i < bytes.len() && bytes[*i] != ',' && bytes[*i] != '}' {
                    *i += 1;
                }
                if *i == before {
                    *i += 1;
                }
            }
        }
        let start = *i;
        while *i < bytes.len() && (bytes[*i].is_alphanumeric() || bytes[*i] == '_') {
            *i += 1;
        }
        if *i > start {
            path.push(bytes[start..*i].iter().collect());
        }
        if *i > start && *i + 1 < bytes.len() && bytes[*i] == ':' && bytes[*i + 1] == ':' {
            *i += 2;
            continue;
        }
        out.push(path);
        return;
    }
}

/// The module a path lands in: its longest prefix that is a module.
fn target(path: &[String], known: &BTreeSet<String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| known.contains(m))
}

/// Module -> modules it uses, for one crate.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    mods.iter()
        .map(|(m, text)| {
            let mut uses: BTreeSet<String> = BTreeSet::new();
            for p in paths(m, &code(text)) {
                if let Some(t) = target(&p, &known) {
                    // The crate root re-exports; a file naming its own module is no edge.
                    if &t != m && !t.is_empty() {
                        uses.insert(t);
                    }
                }
            }
            (m.clone(), uses)
        })
        .collect()
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_module_imports_itself_back() {
    let mut found = Vec::new();
    for krate in ["node", "gossip", "geo", "tests"] {
        let g = graph(&root().join(krate).join("src"));
        assert!(g.len() > 1, "{krate}: no modules found");
        for c in cycles(&g) {
            found.push(format!("{krate}: {}", c.join(" <-> ")));
        }
    }
    assert!(
        found.is_empty(),
        "import cycles (each line: modules that reach each other):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    // The checker itself: two files that name each other form one cycle; grouped, nested and
    // `super::` paths count; comments, strings and test modules do not.
    let a = "use crate::{b::{Thing, Other as O}, c};\n// crate::d::X\nlet s = \"crate::d\";\n";
    let b = "use super::a::Y;\n#[cfg(test)]\nmod tests {\n    use crate::d::Z;\n}\n";
    let known: BTreeSet<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    let edges = |m: &str, text: &str| -> BTreeSet<String> {
        paths(m, &code(text))
            .iter()
            .filter_map(|p| target(p, &known))
            .collect()
    };
    assert_eq!(edges("a", a), BTreeSet::from(["b".into(), "c".into()]));
    assert_eq!(edges("b", b), BTreeSet::from(["a".into()]));
    let g = BTreeMap::from([
        ("a".to_string(), edges("a", a)),
        ("b".to_string(), edges("b", b)),
        ("c".to_string(), BTreeSet::new()),
    ]);
    assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".to_string()]]);
}

#[test]
fn the_core_is_pure() {
    let src = root().join("node/src");
    let g = graph(&src);
    let mods = modules(&src);
    let mut bad = Vec::new();
    for (m, uses) in g.iter().filter(|(m, _)| m.starts_with("core")) {
        for u in uses {
            if !(u.starts_with("core") || u.starts_with("config")) {
                bad.push(format!(
                    "{m} imports {u}: the core depends on config and itself only"
                ));
            }
        }
        // Sockets, tasks, clocks, randomness and files belong to the shells.
        let c = code(&mods[m]);
        for needle in [
            "tokio::net",
            "tokio::spawn",
            "tokio::task",
            "std::net::Tcp",
            "std::net::Udp",
            "Instant::now",
            "SystemTime",
            "rand::",
            "std::fs",
            "std::thread",
            "sleep",
        ] {
            if c.contains(needle) {
                bad.push(format!("{m} uses {needle}: pass it in from a shell"));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn crates_depend_node_gossip_geo_never_back() {
    let manifest = |k: &str| std::fs::read_to_string(root().join(k).join("Cargo.toml")).unwrap();
    let deps = |k: &str| -> Vec<&'static str> {
        let m = manifest(k);
        ["switchyard-node", "switchyard-gossip", "switchyard-geo"]
            .into_iter()
            .filter(|d| m.lines().any(|l| l.trim_start().starts_with(d)))
            .collect()
    };
    assert_eq!(
        deps("geo"),
        Vec::<&str>::new(),
        "geo depends on no other crate of ours"
    );
    assert_eq!(
        deps("gossip"),
        vec!["switchyard-geo"],
        "gossip depends on geo only"
    );
    assert!(!deps("node").contains(&"switchyard-node"));
}

/// The node's layers, lowest first, as `node/src/lib.rs` states them: a module may use
/// modules of lower layers (and its own submodules), never one of its own layer or above.
const NODE_LAYERS: &[&[&str]] = &[
    &["config", "metrics", "clock"],
    &["error", "core"],
    &["locate", "hub"],
    &["relays"],
    &["proxy", "monitor", "mesh", "dns"],
    &["state", "peer_relay"],
    &["status"],
    &["app"],
    &["cli"],
];

#[test]
fn node_modules_depend_only_downwards() {
    let layer = |m: &str| {
        let top = m.split("::").next().unwrap_or(m);
        NODE_LAYERS.iter().position(|l| l.contains(&top))
    };
    let g = graph(&root().join("node/src"));
    let mut bad = Vec::new();
    for (m, uses) in &g {
        if m.is_empty() {
            continue; // lib.rs declares the modules
        }
        let Some(lm) = layer(m) else {
            bad.push(format!(
                "{m} is in no layer: add it to NODE_LAYERS and lib.rs"
            ));
            continue;
        };
        let top = m.split("::").next().unwrap_or(m);
        for u in uses {
            let ut = u.split("::").next().unwrap_or(u);
            if ut == top {
                continue; // within one top-level module; cycles are checked above
            }
            match layer(u) {
                Some(lu) if lu < lm => {}
                _ => bad.push(format!("{m} uses {u}, which is not below it")),
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
