//! Schema-driven fuzzing of the JSON API with a real third-party tool: schemathesis
//! reads `/api/v1/openapi.json` and sends what the document allows and what it does
//! not. Every answer must be a documented status with a documented content type and
//! body, and never a server error. Bounded: a fixed seed and example count.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::api::Api;

/// Where `scripts/test-deps.sh` installed schemathesis.
fn schemathesis() -> PathBuf {
    let dir = std::env::var("ZLH_TEST_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-deps"));
    let bin = dir.join("venv/bin/schemathesis");
    assert!(
        bin.exists(),
        "schemathesis is missing in {}: run scripts/test-deps.sh (./scripts/test does)",
        dir.display()
    );
    bin
}

#[test]
fn the_api_survives_schema_driven_fuzzing_with_no_server_error_and_no_schema_violation() {
    let bin = schemathesis();
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let mut child = Command::new(bin)
        .current_dir(tmp.path())
        .args([
            "run",
            &api.served.url("/api/v1/openapi.json"),
            "-H",
            &format!("Authorization: Bearer {}", api.token),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,fuzzing",
            "--seed",
            "1",
            "--max-examples",
            "60",
            "--workers",
            "1",
            "--no-color",
        ])
        // Its report goes to a file: a pipe nobody reads could fill and stall it.
        .stdout(std::fs::File::create(tmp.path().join("schemathesis.out")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting schemathesis");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(240) {
            child.kill().expect("stopping schemathesis");
            panic!("schemathesis ran past its 4-minute bound");
        }
        // Polling a child's exit, bounded by the deadline above.
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = std::fs::read_to_string(tmp.path().join("schemathesis.out")).unwrap_or_default();
    assert!(status.success(), "schemathesis found problems:\n{report}");
    assert!(
        report.contains("generated") && !report.contains("Server error"),
        "{report}"
    );
    assert!(
        !api.served.log_text().contains("panicked"),
        "no panic in zlh serve's log"
    );
}
