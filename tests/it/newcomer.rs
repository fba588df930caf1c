//! Newcomer friction (issue 21): what a new user ran into when following the README
//! with a real game — each test replays it against the real binary.

use crate::support;

use std::path::Path;
use std::time::Duration;

use crate::support::api::{Api, standin_template};
use crate::support::{Served, open_db, zlh};
use serde_json::{Value, json};

/// The stand-in game as a `minecraft` template that does not ask for the EULA itself.
fn minecraft_without_eula_flag(slug: &str) -> Value {
    let mut t = standin_template();
    t["slug"] = json!(slug);
    t["game"] = json!("minecraft");
    t["spec"]["eula_required"] = json!(false);
    t
}

fn count(data: &Path, sql: &str) -> i64 {
    open_db(data).query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_minecraft_template_needs_eula_at_create_time_unless_it_declares_a_third_party_server() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start_on(tmp.path(), served_with_ports(tmp.path(), EULA_PORTS, &[]));
    let data = api.served.data_dir.clone();
    let (code, body) = api.call(
        "POST",
        "/api/v1/templates",
        Some(minecraft_without_eula_flag("mc-custom")),
    );
    assert_eq!(code, 201, "{body}");

    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "late", "template": "mc-custom", "version": "1.0"})),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["field"], "eula", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"eula\": true"),
        "the message speaks the API's words: {body}"
    );
    // Nothing was written: no server, no job, no directory.
    assert_eq!(count(&data, "SELECT count(*) FROM servers"), 0);
    assert_eq!(
        count(
            &data,
            "SELECT count(*) FROM jobs WHERE kind LIKE 'server.%'"
        ),
        0
    );
    assert!(!data.join("servers").exists() || dir_is_empty(&data.join("servers")));

    // A template that declares a third-party server (not Mojang's) is not held to
    // Mojang's EULA, neither by the create nor by the agent: it reaches `running`.
    let mut t = minecraft_without_eula_flag("mc-third-party");
    t["spec"]["third_party_server"] = json!(true);
    // The stand-in itself insists on an eula.txt, as Mojang's server does.
    t["spec"]["files"] = json!([{"destination": "eula.txt", "content": "eula=true\n"}]);
    let (code, body) = api.call("POST", "/api/v1/templates", Some(t));
    assert_eq!(code, 201, "{body}");
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "squid", "template": "mc-third-party", "version": "1.0"})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    wait_running(&api, id);
}

/// Waits for `running`; a failure says where the server got stuck.
fn wait_running(api: &Api, id: i64) -> Value {
    support::wait_for(
        &format!("server {id} to be running"),
        Duration::from_secs(90),
        || {
            let s = api.server(id);
            if s["status"] == "failed" {
                let (_, events) = api.call("GET", &format!("/api/v1/servers/{id}/events"), None);
                panic!("server {id} failed: {s}\nevents: {events}");
            }
            (s["status"] == "running").then_some(s)
        },
    )
}

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[test]
fn cli_commands_refuse_a_data_dir_without_a_database_and_name_the_running_one() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();

    // Nothing served anywhere yet: refused, and nothing is created.
    for args in [
        &["user", "list"][..],
        &["user", "add", "admin", "--admin"],
        &["token", "create", "--user", "admin"],
        &["jobs", "list"],
    ] {
        let out = zlh(&elsewhere)
            .args(args)
            .arg("--data-dir")
            .arg(&empty)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            err.contains(&format!("no zlh database at {}", empty.display()))
                && err.contains("pass --data-dir or set ZLH_DATA_DIR"),
            "{args:?}: {err}"
        );
        assert!(
            dir_is_empty(&empty),
            "{args:?} created something in {empty:?}"
        );
    }
    // The issue's repro: no --data-dir at all, run from another directory.
    let out = zlh(&elsewhere).args(["user", "list"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        dir_is_empty(&elsewhere),
        "no ./zlh-data was created beside the caller"
    );

    // With a `zlh serve` running on another data dir, the refusal names it.
    let data = tmp.path().join("data");
    let served = Served::start(tmp.path(), &data, &[]);
    let out = zlh(&elsewhere).args(["user", "list"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        // Other tests' servers may be listed too (they run side by side).
        err.contains("`zlh serve` is using ")
            && err.contains(&format!(
                "{} (host {}",
                data.display(),
                zlh::config::hostname()
            ))
            && err.contains(&format!("listening on {}", served.addr)),
        "{err}"
    );
    assert!(dir_is_empty(&elsewhere));

    // `zlh token create` says where it issued the token, on stderr; stdout is the token.
    let run = |args: &[&str]| {
        zlh(&elsewhere)
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    assert!(run(&["user", "add", "admin", "--admin"]).status.success());
    let out = run(&["token", "create", "--user", "admin"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the token on stdout: {stdout}"
    );
    assert!(
        err.contains(&data.display().to_string())
            && err.contains(&format!("http://{}", served.addr)),
        "{err}"
    );
    let code = support::http_get_with_bearer(&served.url("/api/v1/templates"), stdout.trim());
    assert_eq!(code, 200, "the token works on the server it names");
}

/// The first ```sh block after `heading` in a markdown file.
fn code_block(markdown: &str, heading: &str, lang: &str) -> String {
    let after = markdown
        .split_once(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"))
        .1;
    let start = after
        .split_once(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("no ```{lang} block after {heading:?}"))
        .1;
    start
        .split_once("\n```")
        .expect("a closed code block")
        .0
        .to_string()
}

/// A gzipped tarball holding `jdk-21.0.5+11-jre/bin/java`: a script standing in for
/// Java that runs the "server jar" (the stand-in game) the way `java -jar` would.
fn fake_jre_tarball(dir: &Path) -> Vec<u8> {
    let root = dir.join("jre-src");
    let bin = root.join("jdk-21.0.5+11-jre/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let java = bin.join("java");
    // The default start command is `{java} -Xms…M -Xmx…M -jar {jar} nogui`.
    std::fs::write(
        &java,
        "#!/bin/sh\n[ \"$3\" = -jar ] || exit 64\nexec python3 \"$4\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&java, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = dir.join("jre.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&root)
        .arg("jdk-21.0.5+11-jre")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

/// Stops the `zlh serve` a script left in the background (found from its lock file)
/// and the local agents under its data dir, also when the test fails.
struct Background(std::path::PathBuf);

impl Drop for Background {
    fn drop(&mut self) {
        let holder = std::fs::read_to_string(self.0.join("zlh.lock"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|h| h["pid"].as_i64());
        if let Some(pid) = holder.filter(|p| *p > 1) {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        support::kill_local_agents(&self.0);
    }
}

#[test]
fn the_readmes_first_server_steps_work_as_written() {
    use support::upstream::{JAVA_KEY, Upstream, VANILLA, vanilla_key};
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Mojang's jar is the stand-in game; Adoptium's JRE runs it.
    let standin = std::fs::read(repo.join(support::api::STANDIN)).unwrap();
    let up = Upstream::start_with(vec![
        (vanilla_key(VANILLA), standin),
        (JAVA_KEY.to_string(), fake_jre_tarball(tmp.path())),
    ]);

    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let steps = code_block(&readme, "### A first server", "sh");
    let (first, rest) = steps.split_once('\n').unwrap();
    assert_eq!(
        first, "cargo build --release && alias zlh=$PWD/target/release/zlh",
        "the README's first step changed: update this test"
    );
    // The only changes: the binary under test instead of a release build, and a free
    // port instead of 8080 (tests run side by side).
    let port = support::free_port();
    let script = format!(
        "set -e\nshopt -s expand_aliases\nalias zlh={}\n{}\necho\necho \"TOKEN=$TOKEN\"\n",
        *support::BIN,
        rest.replace("localhost:8080", &format!("localhost:{port}"))
    );
    assert!(
        script.matches(&format!("localhost:{port}")).count() >= 4,
        "{script}"
    );
    let _cleanup = Background(work.join("zlh-data"));
    let stdout = tmp.path().join("stdout");
    let stderr = tmp.path().join("stderr");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c").arg(&script).current_dir(&work);
    for (k, _) in std::env::vars() {
        if k.starts_with("ZLH_") {
            cmd.env_remove(k);
        }
    }
    // Files, not pipes: the backgrounded `zlh serve` keeps its stdout open.
    let status = cmd
        .env("ZLH_LISTEN", format!("127.0.0.1:{port}"))
        .env("ZLH_ARTIFACTS_MOJANG_URL", &up.base)
        .env("ZLH_ARTIFACTS_ADOPTIUM_URL", &up.base)
        .env("ZLH_LOCAL_PORT_MIN", README_PORTS.0)
        .env("ZLH_LOCAL_PORT_MAX", README_PORTS.1)
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .status()
        .unwrap();
    let out = std::fs::read_to_string(&stdout).unwrap();
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert!(status.success(), "{out}\n{err}");
    assert!(
        out.contains("\"slug\":\"minecraft-vanilla\""),
        "the templates: {out}"
    );
    assert!(out.contains("\"job\""), "the create's answer: {out}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN="))
        .unwrap()
        .to_string();
    let url = format!("http://127.0.0.1:{port}/api/v1/servers/1");
    let server = support::wait_for(
        "the README's server to be running",
        Duration::from_secs(120),
        || {
            let s = get_json(&url, &token)?;
            assert_ne!(s["status"], "failed", "{s}\n{err}");
            (s["status"] == "running").then_some(s)
        },
    );
    assert_eq!(server["name"], "survival");
    assert_eq!(up.downloads(&vanilla_key(VANILLA)), 1);
    assert_eq!(up.downloads(JAVA_KEY), 1);
}

/// A GET with a bearer token, as JSON (None when nothing answers yet).
fn get_json(url: &str, token: &str) -> Option<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .ok()?
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .ok()?;
        resp.json().await.ok()
    })
}

/// Where `scripts/test-deps.sh` put flying-squid.
fn node_modules() -> std::path::PathBuf {
    let dir = std::env::var("ZLH_TEST_DEPS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-deps"))
        .join("node_modules");
    assert!(
        dir.join("flying-squid/package.json").exists(),
        "flying-squid is missing in {}: run scripts/test-deps.sh (./scripts/test does)",
        dir.display()
    );
    dir
}

/// docs/templates.md's worked example, as written there.
fn docs_example() -> Value {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/templates.md"))
            .unwrap();
    serde_json::from_str(&code_block(&doc, "## A worked example", "json"))
        .expect("the example is JSON")
}

/// Local-node ports of this file's servers: above every `Served` window
/// (20000..32600) and below the kernel's ephemeral range (32768..), so neither other
/// test processes nor agents they leave behind hold them. One range per test.
const README_PORTS: (&str, &str) = ("32600", "32649");
const EULA_PORTS: (&str, &str) = ("32650", "32699");
const SQUID_PORTS: (&str, &str) = ("32700", "32733");
const COLOUR_PORTS: (&str, &str) = ("32734", "32767");

/// A served data dir with the local node's ports in `ports`.
fn served_with_ports(tmp: &Path, ports: (&str, &str), env: &[(&str, &str)]) -> Served {
    let mut env = env.to_vec();
    env.extend([
        ("ZLH_ARTIFACTS_UPSTREAM", "false"),
        ("ZLH_LOCAL_PORT_MIN", ports.0),
        ("ZLH_LOCAL_PORT_MAX", ports.1),
    ]);
    Served::start_with_env(tmp, &tmp.join("data"), &[], &env)
}

/// A served data dir (flying-squid findable by the games) with the docs' example
/// template added and a server of it running: (api, server id, game port).
fn docs_example_running(tmp: &Path, name: &str, ports: (&str, &str)) -> (Api, i64, i64) {
    let served = served_with_ports(tmp, ports, &[]);
    let api = Api::start_on(tmp, served);
    let mut template = docs_example();
    // The one value that differs here: where this test suite installed flying-squid.
    assert_eq!(
        template["spec"]["env"]["NODE_PATH"], "/usr/local/lib/node_modules",
        "the docs' example names npm's global folder"
    );
    template["spec"]["env"]["NODE_PATH"] = json!(node_modules().to_str().unwrap());
    let (code, body) = api.call("POST", "/api/v1/templates", Some(template));
    assert_eq!(code, 201, "{body}");
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": name, "template": "flying-squid", "version": "1.21.4"})),
    );
    assert_eq!(code, 202, "no eula needed for a third-party server: {body}");
    let id = body["server"]["id"].as_i64().unwrap();
    let s = wait_running(&api, id);
    let port = s["game_port"].as_i64().unwrap();
    (api, id, port)
}

#[test]
fn the_docs_example_template_runs_a_non_java_game_and_the_docs_cover_the_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, id, port) = docs_example_running(tmp.path(), "squid", SQUID_PORTS);
    // flying-squid answers the status ping with what the seeded settings file says.
    let status = support::api::slp(port).expect("flying-squid answers");
    assert_eq!(status["description"]["text"], "squid", "{status}");
    assert_eq!(status["version"]["name"], "1.21.4", "{status}");
    // Placeholders are filled in `env` too: node got the server's memory as its heap.
    let vmid = api.server(id)["vmid"].as_i64().unwrap();
    let payload = std::fs::read_to_string(
        api.served
            .data_dir
            .join(format!("servers/{vmid}/agent/payload.json")),
    )
    .unwrap();
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        payload["env"]["NODE_OPTIONS"], "--max-old-space-size=512",
        "{payload}"
    );

    // Every field of the OpenAPI document's template schema is documented.
    let (code, doc) = api.call("GET", "/api/v1/openapi.json", None);
    assert_eq!(code, 200);
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/templates.md"))
            .unwrap();
    let spec = &doc["components"]["schemas"]["TemplateSpec"];
    assert_eq!(
        doc["components"]["schemas"]["NewTemplate"]["properties"]["spec"]["$ref"],
        "#/components/schemas/TemplateSpec"
    );
    for field in spec["properties"].as_object().unwrap().keys() {
        assert!(
            docs.contains(&format!("`spec.{field}`")),
            "{field} is undocumented"
        );
    }
}

#[test]
fn a_games_terminal_codes_are_text_in_the_api_and_colours_in_the_console_tab() {
    let tmp = tempfile::tempdir().unwrap();
    // flying-squid writes `> ESC[1G` before each line and colours its levels.
    let (api, id, _) = docs_example_running(tmp.path(), "colours", COLOUR_PORTS);
    let tail = |query: &str| {
        support::wait_for("the listening line", Duration::from_secs(30), || {
            let (code, body) = api.call(
                "GET",
                &format!("/api/v1/servers/{id}/console?lines=200{query}"),
                None,
            );
            assert_eq!(code, 200, "{body}");
            let lines: Vec<String> = body["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_string())
                .collect();
            lines
                .iter()
                .any(|l| l.contains("Server listening on port"))
                .then_some(lines)
        })
    };
    let text = tail("");
    let listening = text
        .iter()
        .find(|l| l.contains("Server listening on port"))
        .unwrap();
    assert!(
        !listening.starts_with('>') && listening.contains("[INFO]: Server listening"),
        "{listening:?}"
    );
    for l in &text {
        assert!(
            !l.contains('\u{1b}') && !l.contains("[1G") && !l.contains("[32m"),
            "{l:?}"
        );
    }
    let raw = tail("&raw=1");
    assert!(
        raw.iter()
            .any(|l| l.contains("\u{1b}[1G") && l.contains("Server listening")),
        "raw=1 keeps the game's bytes: {raw:?}"
    );
    // The agent's own lines read as sentences.
    assert!(
        text.iter()
            .any(|l| l.starts_with("[zlh-agent] started the game")),
        "{text:?}"
    );

    // The UI's Console tab renders the colours as classed spans, with no escape text.
    let session = support::ui_session(&api.served);
    let (name, value) = session.split_once('=').unwrap();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    let b = support::browser::Browser::start(&shots);
    b.goto(&api.served.url("/login"));
    b.cmd(
        "POST",
        "/cookie",
        Some(json!({"cookie": {"name": name, "value": value, "path": "/"}})),
        "the session cookie",
    );
    b.goto(&api.served.url(&format!("/servers/{id}")));
    b.find("nav.tabs a[href$='/console']").click();
    b.wait_text(
        "#console-log",
        "Server listening on port",
        Duration::from_secs(30),
    );
    let green = b.find_all("#console-log span.sgr-fg-green");
    assert!(
        green.iter().any(|s| s.text() == "INFO"),
        "INFO is a green span"
    );
    let shown = b.find("#console-log").text();
    assert!(
        !shown.contains('\u{1b}') && !shown.contains("[1G") && !shown.contains("[39m"),
        "{shown:?}"
    );
    // Its command box is in view without scrolling.
    assert_eq!(
        b.execute(
            "var r = document.getElementById('console-command').getBoundingClientRect(); return r.top >= 0 && r.bottom <= window.innerHeight;",
            vec![]
        ),
        json!(true)
    );
    b.find("#console-command").send_keys("say hi-from-newcomer");
    b.find("#console-form button").click();
    b.wait_text("#console-log", "hi-from-newcomer", Duration::from_secs(30));
    b.screenshot("newcomer-console-colours");
}

#[test]
fn the_log_has_colours_only_on_a_terminal_and_the_favicon_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    // Served sends stderr to a file: `auto` means no escape codes there.
    let served = Served::start(tmp.path(), &tmp.path().join("data"), &[]);
    let log = served.log_text();
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI codes in a log file: {log:?}"
    );

    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code} %{content_type}"])
        .arg(served.url("/favicon.ico"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("200 image/x-icon"), "{text:?}");
    assert!(
        out.stdout.starts_with(&[0, 0, 1, 0]),
        "an ICO file: {:?}",
        &out.stdout[..8.min(out.stdout.len())]
    );
    drop(served);

    // `always` keeps them, even in a file.
    let served = Served::start_with_env(
        tmp.path(),
        &tmp.path().join("data2"),
        &[],
        &[("ZLH_LOG_COLOR", "always")],
    );
    assert!(served.log_text().contains("\u{1b}["));
}
