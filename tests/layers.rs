//! Keeps the shape of the crate: the layer table in `docs/architecture.md` ("Layers") is read
//! here and enforced on the source. A module may name modules of its own layer and of the
//! layers below it, never above (the edge below the node, the node importing the CLI, the store
//! importing the network); the pure core and the store name no async runtime, socket or HTTP
//! crate; people-facing output (`say!`, progress bars) stays at the edge. Every module of
//! `src/` must be in the table, so a new module is placed on purpose.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// External crates a layer must not name, by layer (as the table names them).
const FORBIDDEN_CRATES: &[(&str, &[&str])] = &[
    ("pure core", &["redb", "tokio", "quinn", "axum", "ureq", "rustls", "indicatif", "clap"]),
    ("blocking", &["tokio", "quinn", "axum", "ureq", "rustls", "indicatif", "clap"]),
    ("async I/O", &["redb", "indicatif", "clap"]),
    ("compose", &["indicatif", "clap"]),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The layers from the table under `## Layers` in docs/architecture.md, top first: each row's
/// first cell names the layer, its second lists the modules in backquotes (`main.rs` is the
/// binary's root).
fn layers(doc: &str) -> Vec<(String, Vec<String>)> {
    let section = doc.split("\n## Layers").nth(1).expect("docs/architecture.md has ## Layers");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut out = Vec::new();
    for row in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(layer), Some(modules)) = (cells.get(1), cells.get(2)) else { continue };
        if *layer == "layer" || layer.starts_with("---") {
            continue;
        }
        let names: Vec<String> = modules
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|m| m.trim_end_matches(".rs").split('/').next().unwrap_or(m).to_string())
            .collect();
        out.push((layer.to_string(), names));
    }
    assert!(out.len() >= 4, "the layer table has too few rows: {out:?}");
    out
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`lib` for lib.rs).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string()
}

/// The code of a file without comments (line comments, doc comments) and string literals, so
/// that prose and messages naming a module do not count as using it.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' && prev != '\'' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
        }
        out.push('\n');
    }
    out
}

/// The modules a piece of code names: `crate::NAME` paths and the `say!` macro (the CLI's).
fn named_modules(code: &str, modules: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for part in code.split("crate::").skip(1) {
        let name: String = part.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if modules.contains(&name) && !found.contains(&name) {
            found.push(name);
        }
    }
    if code.contains("say!(") && !found.iter().any(|m| m == "cli") {
        found.push("cli".to_string());
    }
    // `use super::` from a top-level file of src reaches the crate root, not a module.
    found
}

/// Whether `code` names the external crate `name` (`use name`, `name::`).
fn names_crate(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = &code[i + name.len()..];
        let bounded = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
        bounded && (after.starts_with("::") || after.starts_with(';') || after.starts_with(" as"))
    })
}

/// Everything the layer rules find wrong in the source tree at `root`.
fn violations(root: &Path) -> Vec<String> {
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("architecture");
    let table = layers(&doc);
    let rank: BTreeMap<String, (usize, String)> = table
        .iter()
        .enumerate()
        .flat_map(|(i, (layer, mods))| mods.iter().map(move |m| (m.clone(), (i, layer.clone()))))
        .collect();
    let src = root.join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let modules: Vec<String> = files
        .iter()
        .map(|f| module_of(&src, f))
        .filter(|m| m != "lib")
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut problems = Vec::new();
    for m in &modules {
        if !rank.contains_key(m) {
            problems.push(format!("module {m} is not in the layer table of docs/architecture.md"));
        }
    }
    for file in &files {
        let m = module_of(&src, file);
        let Some((level, layer)) = rank.get(&m) else { continue };
        let text = code(&std::fs::read_to_string(file).expect("read source"));
        let shown = file.strip_prefix(root).unwrap_or(file).display();
        for used in named_modules(&text, &modules) {
            if let Some((their, their_layer)) = rank.get(&used)
                && their < level
            {
                problems.push(format!(
                    "{shown}: {m} ({layer}) uses {used} ({their_layer}), a layer above it"
                ));
            }
        }
        for (l, crates) in FORBIDDEN_CRATES {
            if l == layer {
                for c in crates.iter().filter(|c| names_crate(&text, c)) {
                    problems.push(format!("{shown}: {m} ({layer}) names the crate {c}"));
                }
            }
        }
    }
    problems
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let problems = violations(&root());
    assert!(problems.is_empty(), "layer violations:\n{}", problems.join("\n"));
}

/// The checker itself catches what it must (so a green run means something): a copy of the
/// tree with one upward import, one forbidden crate and one unplaced module.
#[test]
fn the_checker_finds_upward_imports_forbidden_crates_and_unplaced_modules() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let copy = tmp.path();
    std::fs::create_dir_all(copy.join("docs")).expect("mkdir");
    std::fs::copy(root().join("docs/architecture.md"), copy.join("docs/architecture.md"))
        .expect("copy doc");
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    for f in &files {
        let to = copy.join(f.strip_prefix(root()).expect("under root"));
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(f, &to).expect("copy source");
    }
    assert!(violations(copy).is_empty(), "the copy starts clean");
    let append = |rel: &str, line: &str| {
        let path = copy.join(rel);
        let text = std::fs::read_to_string(&path).expect("read") + line;
        std::fs::write(&path, text).expect("write");
    };
    append("src/store.rs", "\nuse crate::transport::ALPN;\n");
    append("src/protocol.rs", "\nuse tokio::sync::mpsc;\n");
    append("src/node.rs", "\nfn shout() { crate::cli::say_line(format_args!(\"x\")); }\n");
    std::fs::write(copy.join("src/newroom.rs"), "//! Nowhere yet.\n").expect("write");
    let found = violations(copy).join("\n");
    assert!(found.contains("src/store.rs: store (blocking) uses transport"), "{found}");
    assert!(
        found.contains("src/protocol.rs: protocol (pure core) names the crate tokio"),
        "{found}"
    );
    assert!(found.contains("src/node.rs: node (compose) uses cli (edge)"), "{found}");
    assert!(found.contains("module newroom is not in the layer table"), "{found}");
}
