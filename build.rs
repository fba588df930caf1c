//! Records the git commit this binary is built from, for `zlh --version`.
//! `BUILD_GIT_COMMIT` overrides it (builds from a tarball); without git or `.git` it is
//! "unknown" rather than a failed build. Not a `ZLH_*` name: cargo also puts it in the
//! environment of `cargo run`/`cargo test`, and zlh refuses unknown `ZLH_*` variables.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=BUILD_GIT_COMMIT");
    // Rebuild when HEAD moves: HEAD itself, the branch it names, and packed refs
    // (paths from git, so worktrees work too).
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(r);
    }
    for w in watched {
        // Only files that exist: a missing one would make cargo rerun this every build.
        if let Some(p) =
            git(&["rev-parse", "--git-path", &w]).filter(|p| std::path::Path::new(p).exists())
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    let commit = std::env::var("BUILD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
}
