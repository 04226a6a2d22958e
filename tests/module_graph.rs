//! The library's modules depend on each other in one direction: no module reaches back to one
//! that depends on it. Read from the source (`crate::<module>` paths in each top-level module's
//! files), so `cargo test --test module_graph -- --nocapture` prints the graph anyone can check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its files name through `crate::`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap();
            let top = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
            // The crate root and the binary (main.rs, cli/) sit above every module.
            if matches!(top.as_str(), "lib" | "main" | "cli") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let deps = graph.entry(top.clone()).or_default();
            for (i, _) in text.match_indices("crate::") {
                let before = text[..i].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                    continue; // `seamless_crate::`, `$crate::`
                }
                let name: String =
                    text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                // `crate::{a, b}` lists are not used in this code base; a lone `crate::Type` is a
                // re-export of the root and names no module.
                if !name.is_empty() && name != top && name.chars().next().unwrap().is_lowercase() {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if any, as the path of modules.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((m, path)) = stack.pop() {
        for d in graph.get(&m).into_iter().flatten() {
            if d == start {
                return Some([path.clone(), vec![d.clone()]].concat());
            }
            if seen.insert(d.clone()) {
                stack.push((d.clone(), [path.clone(), vec![d.clone()]].concat()));
            }
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycles() {
    let graph = module_graph();
    for (m, deps) in &graph {
        println!("{m:<16} -> {}", deps.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    assert!(graph.len() > 10, "the source was not found: {graph:?}");
    let cycles: Vec<String> = graph.keys().filter_map(|m| cycle_through(&graph, m)).map(|c| c.join(" -> ")).collect();
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_planner_knows_no_backend_and_no_runner() {
    let graph = module_graph();
    let planner = &graph["planner"];
    for m in ["cpu", "cuda", "backend", "slide", "pipeline"] {
        assert!(!planner.contains(m), "planner depends on {m}: {planner:?}");
    }
}
