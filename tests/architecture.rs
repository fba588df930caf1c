//! The architecture DESIGN §2 draws, kept by a test: which top-level module may use
//! which ("never" rules), no import cycle between top-level modules, and SQL only in
//! the modules that own the tables (`db/`, `queue/`, `domain/`, `store/`). It reads the
//! sources as text: `crate::<module>` paths (and `super::` from a top-level file's
//! children) are the edges; string literals that start like SQL are statements.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// DESIGN's "never" rules: (from, to).
const NEVER: &[(&str, &str)] = &[
    ("queue", "domain"),
    ("queue", "jobs"),
    ("queue", "http"),
    ("domain", "http"),
    ("domain", "jobs"),
    ("runtime", "jobs"),
    ("runtime", "http"),
    ("edge", "jobs"),
    ("edge", "http"),
    ("artifacts", "jobs"),
    ("artifacts", "http"),
    ("agent", "db"),
    ("agent", "domain"),
    ("agent", "jobs"),
    ("agentd", "db"),
    ("agentd", "domain"),
    ("agentd", "jobs"),
    ("db", "domain"),
    ("store", "domain"),
];

/// Where SQL may be written.
const SQL_HOMES: &[&str] = &["db", "queue", "domain", "store"];

/// Files of the crate root that only wire things together (not a module of their own).
const ROOT_WIRING: &[&str] = &["main", "lib"];

/// One source file: its top-level module and its text.
struct Source {
    path: String,
    module: String,
    text: String,
}

fn top_module(rel: &str) -> String {
    let first = rel.split('/').next().unwrap_or(rel);
    first.trim_end_matches(".rs").to_string()
}

/// The text without comments (line and doc comments), so prose naming a module or a
/// SQL word is not taken for code.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // `//` inside a string (a URL) is rare in this code base's paths; a quote
            // before it means we keep the line.
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level modules a file uses through `crate::X` paths.
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code = code_of(text);
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
            out.insert(name);
        }
        rest = after;
    }
    // `use crate::{a, b::c}` groups.
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::{") {
        let after = &rest[i + "crate::{".len()..];
        let group = &after[..after.find('}').unwrap_or(after.len())];
        for item in group.split(',') {
            let name: String = item
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
        rest = after;
    }
    out
}

/// String literals of a file that start like an SQL statement: (line, first words).
fn sql_literals(text: &str) -> Vec<(usize, String)> {
    const STARTS: &[&str] = &[
        "SELECT ", "INSERT ", "UPDATE ", "DELETE ", "WITH ", "CREATE ", "ALTER ", "DROP ",
        "PRAGMA ", "BEGIN", "REPLACE ",
    ];
    let code = code_of(text);
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find('"') {
            let lit = rest[i + 1..].trim_start();
            if STARTS.iter().any(|s| lit.starts_with(s)) {
                out.push((n + 1, lit.chars().take(40).collect()));
            }
            rest = &rest[i + 1..];
        }
    }
    out
}

struct Violations(Vec<String>);

fn check(sources: &[Source]) -> Violations {
    let mut v = Vec::new();
    let modules: BTreeSet<String> = sources.iter().map(|s| s.module.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources {
        if ROOT_WIRING.contains(&s.module.as_str()) {
            continue;
        }
        for used in uses(&s.text) {
            if used == s.module || !modules.contains(&used) || ROOT_WIRING.contains(&used.as_str())
            {
                continue;
            }
            if NEVER.contains(&(s.module.as_str(), used.as_str())) {
                v.push(format!(
                    "{}: `{}` must never use `{}` (DESIGN §2)",
                    s.path, s.module, used
                ));
            }
            graph.entry(s.module.clone()).or_default().insert(used);
        }
        if !SQL_HOMES.contains(&s.module.as_str()) {
            for (line, start) in sql_literals(&s.text) {
                v.push(format!(
                    "{}:{line}: SQL outside db/, queue/, domain/, store/: \"{start}…\"",
                    s.path
                ));
            }
        }
    }
    for cycle in cycles(&graph) {
        v.push(format!(
            "import cycle between top-level modules: {}",
            cycle.join(" → ")
        ));
    }
    Violations(v)
}

/// Every elementary cycle's smallest rotation, found by a depth-first walk (the graph
/// has a few dozen edges).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        out: &mut BTreeSet<Vec<String>>,
    ) {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                let mut c = path.clone();
                let min = c
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, m)| *m)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                c.rotate_left(min);
                c.push(c[0].clone());
                out.insert(c);
            } else if !path.contains(next) && next.as_str() > start {
                path.push(next.clone());
                walk(graph, start, next, path, out);
                path.pop();
            }
        }
    }
    let mut out = BTreeSet::new();
    for start in graph.keys() {
        walk(graph, start, start, &mut vec![start.clone()], &mut out);
    }
    out
}

fn read_sources(root: &Path) -> Vec<Source> {
    fn visit(dir: &Path, root: &Path, out: &mut Vec<Source>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                visit(&p, root, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push(Source {
                    module: top_module(&rel),
                    path: format!("src/{rel}"),
                    text: std::fs::read_to_string(&p).unwrap(),
                });
            }
        }
    }
    let mut out = Vec::new();
    visit(root, root, &mut out);
    out
}

#[test]
fn the_source_keeps_designs_rules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = read_sources(&src);
    assert!(sources.len() > 20, "read the sources");
    let found = check(&sources);
    assert!(
        found.0.is_empty(),
        "{} violation(s) of DESIGN §2:\n{}",
        found.0.len(),
        found.0.join("\n")
    );
}

#[test]
fn top_level_src_holds_only_the_wiring() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for f in &files {
        assert!(
            ["main.rs", "lib.rs", "app.rs", "config.rs", "error.rs"].contains(&f.as_str()),
            "src/{f}: top-level src/ holds main.rs, lib.rs and the wiring (app, config, error); put it in a folder named for what it is"
        );
    }
}

/// The checker itself: each planted violation is found, and clean code passes.
#[test]
fn planted_violations_are_found() {
    let file = |path: &str, text: &str| Source {
        path: path.into(),
        module: top_module(path.trim_start_matches("src/")),
        text: text.into(),
    };
    let clean = vec![
        file(
            "src/queue/mod.rs",
            "use crate::db::Db;\nconst Q: &str = \"SELECT 1\";",
        ),
        file("src/db/mod.rs", "pub fn now() {}"),
        file("src/domain/mod.rs", "use crate::queue;\nuse crate::db;"),
        file(
            "src/http/mod.rs",
            "use crate::{domain, queue::Queue};\n// SELECT in a comment\n",
        ),
    ];
    assert!(check(&clean).0.is_empty(), "{:?}", check(&clean).0);

    let planted: Vec<(Source, &str)> = vec![
        (
            file("src/queue/worker.rs", "use crate::domain::servers;"),
            "`queue` must never use `domain`",
        ),
        (
            file("src/agent/client.rs", "let t = crate::db::now_ms();"),
            "`agent` must never use `db`",
        ),
        (
            file("src/store/backup.rs", "use crate::{db, domain::users};"),
            "`store` must never use `domain`",
        ),
        (
            file(
                "src/http/ui/servers.rs",
                "c.query_row(\"SELECT id FROM servers\", [], f)",
            ),
            "SQL outside",
        ),
        (
            file(
                "src/jobs/edge.rs",
                "let s = \"  UPDATE servers SET x = 1\";",
            ),
            "SQL outside",
        ),
    ];
    for (bad, expect) in planted {
        let mut sources = clean
            .iter()
            .map(|s| file(&s.path, &s.text))
            .collect::<Vec<_>>();
        let path = bad.path.clone();
        sources.push(bad);
        let found = check(&sources).0;
        assert!(
            found.iter().any(|f| f.contains(expect)),
            "{path}: expected {expect:?} in {found:?}"
        );
    }

    // A cycle through two modules, and one through three.
    let cyc = vec![
        file("src/jobs/mod.rs", "use crate::http::x;"),
        file("src/http/mod.rs", "use crate::jobs::y;"),
        file("src/app.rs", "use crate::config;"),
        file("src/config.rs", "use crate::edge::c;"),
        file("src/edge/mod.rs", "use crate::app::z;"),
    ];
    let found = check(&cyc).0;
    assert!(
        found.iter().any(|f| f.contains("http → jobs → http")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.contains("app → config → edge → app")),
        "{found:?}"
    );
}

/// `(METHOD, path)` of every `.route("path", get(..).post(..))` in `text`.
fn routes_in(text: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(".route(") {
        let after = &rest[i + ".route(".len()..];
        // The call's arguments: up to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let end = after
            .char_indices()
            .find_map(|(j, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(j)
            })
            .unwrap_or(after.len());
        let args = &after[..end];
        if let Some(path) = args.split('"').nth(1) {
            for method in ["get", "post", "put", "delete", "patch"] {
                let called = args.match_indices(&format!("{method}(")).any(|(k, _)| {
                    k == 0
                        || !args.as_bytes()[k - 1].is_ascii_alphanumeric()
                            && args.as_bytes()[k - 1] != b'_'
                });
                if called {
                    out.insert((method.to_uppercase(), path.to_string()));
                }
            }
        }
        rest = &after[end..];
    }
    out
}

/// Every route the JSON API's routers register is in the OpenAPI document, and the
/// document names no route the routers lack (that one answering 401, not 404, without
/// a token is `servers::every_api_route_needs_a_token`).
#[test]
fn every_api_route_is_in_the_openapi_document_and_back() {
    let api = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/api");
    let mut routed = BTreeSet::new();
    for entry in std::fs::read_dir(&api).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            routed.extend(routes_in(&code_of(
                &std::fs::read_to_string(&path).unwrap(),
            )));
        }
    }
    let doc = zlh::http::api::openapi::document();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|m| *m != "parameters")
                .map(|m| (m.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(routed.len() >= 30, "{routed:?}");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the OpenAPI document: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
}

#[test]
fn route_extraction_reads_chained_and_multiline_routes() {
    let text = r#"Router::new()
        .route("/a", post(create).get(list))
        .route(
            "/b/{id}",
            get(tail).post(command),
        )
        .route("/c", delete(remove_schedule))"#;
    let got: Vec<_> = routes_in(text).into_iter().collect();
    let want: Vec<(String, String)> = [
        ("DELETE", "/c"),
        ("GET", "/a"),
        ("GET", "/b/{id}"),
        ("POST", "/a"),
        ("POST", "/b/{id}"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want);
}
