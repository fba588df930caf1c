//! `zlh doctor`: the checks an operator used to do by hand after a host move, as one
//! command (and `GET /api/v1/doctor`). Each finding has a verdict and what to do;
//! `--fix` performs only the safe repairs and says what it did.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::agent::client::AgentClient;
use crate::db::now_ms;
use crate::domain::DomainError;
use crate::domain::nodes;
use crate::domain::servers::{self, ServerStatus};
use crate::jobs::services::Services;
use crate::runtime::{ContainerSpec, Runtime, server_tag};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Problem,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub verdict: Verdict,
    pub subject: String,
    pub detail: String,
    /// What to do about it.
    pub action: String,
}

/// The "1 / 1 / 1" check of one server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerCheck {
    pub server_id: i64,
    pub name: String,
    pub rows_with_name: i64,
    pub provision_jobs: i64,
    pub jobs_by_state: BTreeMap<String, i64>,
    pub containers: Vec<i64>,
    pub installs: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub executor: Option<crate::store::instance::Instance>,
    pub executor_running: Option<String>,
    pub findings: Vec<Finding>,
    pub fixed: Vec<String>,
    pub server: Option<ServerCheck>,
}

impl Report {
    pub fn has_problems(&self) -> bool {
        self.findings.iter().any(|f| f.verdict == Verdict::Problem)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub server: Option<i64>,
    pub fix: bool,
    /// Destroy orphan containers (they may hold a world): only with this.
    pub delete_orphans: bool,
}

fn finding(
    check: &'static str,
    verdict: Verdict,
    subject: String,
    detail: String,
    action: &str,
) -> Finding {
    Finding {
        check,
        verdict,
        subject,
        detail,
        action: action.into(),
    }
}

pub async fn run(svc: &Services, opts: &Options) -> Result<Report, DomainError> {
    let (executor, executor_running, mut findings) = executor(svc).await?;
    let mut fixed = Vec::new();
    findings.push(file_modes(&svc.config.data_dir, opts.fix, &mut fixed));
    let live = svc.db.call(|c| servers::live_summaries(c)).await?;
    let (world, containers_of) = containers(svc, opts, &live).await?;
    for c in [
        duplicates(svc).await?,
        world,
        stuck(svc, opts).await?,
        agent_drift(&live),
        agent_versions(svc).await?,
        velocity_drift(svc, opts).await?,
        failed_edge(svc).await?,
    ] {
        findings.extend(c.findings);
        fixed.extend(c.fixed);
    }
    let server = match opts.server {
        Some(id) => {
            let containers = containers_of.get(&id).cloned().unwrap_or_default();
            let (check, found) = one_server(svc, id, containers).await?;
            findings.push(found);
            Some(check)
        }
        None => None,
    };
    Ok(Report {
        executor,
        executor_running,
        findings,
        fixed,
        server,
    })
}

/// Agents that last reported another build than this zlh (the reconciler asks each
/// agent's `/version`): they run, but miss what this version fixed.
async fn agent_versions(svc: &Services) -> Result<Checked, DomainError> {
    let current = crate::agent::AgentVersion::this_build().label();
    let cur = current.clone();
    let rows = svc
        .db
        .call(move |c| crate::domain::upgrades::outdated(c, &cur, None))
        .await?;
    let findings = rows
        .into_iter()
        .map(|r| {
            finding(
                "agent_version",
                Verdict::Warn,
                format!("server {} ({}) on node {}", r.server_id, r.server, r.node),
                format!(
                    "its agent runs {}; this zlh is {current}",
                    r.version.unwrap_or_default()
                ),
                &format!(
                    "upgrade it: \"Upgrade agents\" on the node's or server's page, or \
                     POST /api/v1/nodes/{}/agents/upgrade",
                    r.node_id
                ),
            )
        })
        .collect();
    Ok(Checked {
        findings,
        fixed: Vec::new(),
    })
}

/// What one check found, and what it repaired (with `--fix`).
#[derive(Default)]
struct Checked {
    findings: Vec<Finding>,
    fixed: Vec<String>,
}

/// Executor: who serves this database (and whether it stopped cleanly).
async fn executor(
    svc: &Services,
) -> Result<
    (
        Option<crate::store::instance::Instance>,
        Option<String>,
        Vec<Finding>,
    ),
    DomainError,
> {
    let mut findings = Vec::new();
    let executor = svc
        .db
        .call(|c| crate::store::instance::get(c).map_err(DomainError::from))
        .await?;
    let executor_running = crate::store::instance::is_held(&svc.config.data_dir)
        .ok()
        .flatten();
    if let Some(i) = &executor {
        let verdict = if executor_running.is_none() && i.stopped_at.is_none() {
            Verdict::Warn
        } else {
            Verdict::Ok
        };
        findings.push(finding(
            "executor",
            verdict,
            format!("host {} pid {}", i.host, i.pid),
            format!(
                "boot {}, since {}, last heartbeat {}{}",
                i.boot_epoch,
                crate::util::format_ts(i.started_at),
                crate::util::format_ts(i.heartbeat_at),
                match (&executor_running, i.stopped_at) {
                    (Some(_), _) => ", serving now".to_string(),
                    (None, Some(t)) => format!(", stopped cleanly {}", crate::util::format_ts(t)),
                    (None, None) => ", not running and did not stop cleanly".to_string(),
                }
            ),
            if verdict == Verdict::Ok {
                ""
            } else {
                "start zlh serve; its running jobs are rescued at start"
            },
        ));
    }

    Ok((executor, executor_running, findings))
}

/// Duplicates in the database (the constraints should make these impossible).
async fn duplicates(svc: &Services) -> Result<Checked, DomainError> {
    let mut findings = Vec::new();
    let dupes = svc.db.call(|c| servers::duplicates(c)).await?;
    for (check, what, n) in dupes {
        findings.push(finding(
            "duplicates",
            Verdict::Problem,
            what,
            format!("{check}: {n} live servers"),
            "delete all but one of them",
        ));
    }

    Ok(Checked {
        findings,
        fixed: Vec::new(),
    })
}

/// The world: containers on every node against the live servers (orphans, a server
/// with several containers, a server whose container is gone). Also returns each
/// server's containers, for the one-server check.
async fn containers(
    svc: &Services,
    opts: &Options,
    live: &[servers::LiveSummary],
) -> Result<(Checked, BTreeMap<i64, Vec<i64>>), DomainError> {
    let (mut findings, mut fixed) = (Vec::new(), Vec::new());
    let node_list = svc.db.call(|c| nodes::list(c)).await?;
    let mut containers_of: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for node in &node_list {
        let rt = match svc.runtime(node) {
            Ok(rt) => rt,
            Err(e) => {
                findings.push(finding(
                    "runtime",
                    Verdict::Warn,
                    format!("node {}", node.name),
                    e.to_string(),
                    "check the node's settings",
                ));
                continue;
            }
        };
        let list = match rt.list().await {
            Ok(l) => l,
            Err(e) => {
                findings.push(finding(
                    "runtime",
                    Verdict::Warn,
                    format!("node {}", node.name),
                    format!("cannot list containers: {e}"),
                    "check that the node is reachable",
                ));
                continue;
            }
        };
        let mut by_server: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for ct in &list {
            let owner = ct
                .tags
                .iter()
                .find_map(|t| t.strip_prefix("srv-").and_then(|n| n.parse::<i64>().ok()));
            match owner {
                Some(id) if live.iter().any(|s| s.id == id && s.node_id == node.id) => {
                    by_server.entry(id).or_default().push(ct.vmid);
                }
                _ => {
                    let subject = format!("node {} CT {}", node.name, ct.vmid);
                    let detail = format!(
                        "tagged zlh ({}) but no live server owns it",
                        ct.description.clone().unwrap_or_default()
                    );
                    if opts.fix && opts.delete_orphans {
                        let spec = ContainerSpec {
                            server_id: owner.unwrap_or(0),
                            name: String::new(),
                            vmid: ct.vmid,
                            cores: 1,
                            memory_mb: 256,
                            agent_port: crate::agent::DEFAULT_PORT,
                            agent_token: String::new(),
                        };
                        match rt.destroy(&spec).await {
                            Ok(()) => {
                                fixed.push(format!("destroyed orphan {subject}"));
                                continue;
                            }
                            Err(e) => findings.push(finding(
                                "orphans",
                                Verdict::Problem,
                                subject.clone(),
                                format!("{detail}; destroying it failed: {e}"),
                                "destroy it by hand",
                            )),
                        }
                    } else {
                        findings.push(finding(
                            "orphans",
                            Verdict::Problem,
                            subject,
                            detail,
                            "it may hold a world: back it up, then `zlh doctor --fix --delete-orphans` destroys it",
                        ));
                    }
                }
            }
        }
        for s in live.iter().filter(|s| s.node_id == node.id) {
            let cts = by_server.remove(&s.id).unwrap_or_default();
            if cts.len() > 1 {
                findings.push(finding(
                    "duplicates",
                    Verdict::Problem,
                    format!("server {} ({})", s.id, s.name),
                    format!(
                        "{} containers carry its tag {}: {:?}",
                        cts.len(),
                        server_tag(s.id),
                        cts
                    ),
                    "keep the one on its VMID; destroy the others after checking their worlds",
                ));
            }
            if s.has_container && !cts.contains(&s.vmid) && s.status != ServerStatus::Deleting {
                findings.push(finding(
                    "orphans",
                    Verdict::Problem,
                    format!("server {} ({})", s.id, s.name),
                    format!("its container {} is gone from node {}", s.vmid, node.name),
                    "reinstall it, or delete the server",
                ));
            }
            containers_of.insert(s.id, cts);
        }
    }

    Ok((Checked { findings, fixed }, containers_of))
}

/// Stuck servers (past their deadline, no job on them), jobs with an expired lease,
/// and held jobs.
async fn stuck(svc: &Services, opts: &Options) -> Result<Checked, DomainError> {
    let (mut findings, mut fixed) = (Vec::new(), Vec::new());
    let now = now_ms();
    let (stuck, expired, held) = svc
        .db
        .call(move |c| {
            Ok::<_, DomainError>((
                servers::stuck(c, now)?,
                crate::queue::expired_leases(c, now)?,
                crate::queue::held(c)?,
            ))
        })
        .await?;
    if opts.fix && !stuck.is_empty() {
        let n = crate::jobs::reconcile::fail_stuck(svc).await?;
        fixed.push(format!(
            "failed {n} stuck server(s) with a reason (retry, reinstall or delete stay possible)"
        ));
    } else {
        for (id, name, status) in stuck {
            findings.push(finding(
                "stuck",
                Verdict::Problem,
                format!("server {id} ({name})"),
                format!("{status} past its deadline with no job working on it"),
                "`zlh doctor --fix` fails it with a reason; then retry or delete",
            ));
        }
    }
    if opts.fix && !expired.is_empty() {
        let n = svc
            .db
            .write(|tx| crate::queue::store::rescue_expired(tx, now_ms()))
            .await?;
        fixed.push(format!(
            "handed back {n} running job(s) whose lease had expired"
        ));
    } else {
        for (id, kind, by) in expired {
            findings.push(finding(
                "stuck",
                Verdict::Problem,
                format!("job {id} ({kind})"),
                format!("running with an expired lease (worker {by})"),
                "`zlh doctor --fix` hands it back to run again",
            ));
        }
    }
    for (id, kind, reason) in held {
        findings.push(finding(
            "held",
            Verdict::Warn,
            format!("job {id} ({kind})"),
            reason,
            "after checking the world: `zlh jobs release` or `zlh jobs cancel`",
        ));
    }

    Ok(Checked { findings, fixed })
}

/// Drift between the database and what agents last said.
fn agent_drift(live: &[servers::LiveSummary]) -> Checked {
    let mut findings = Vec::new();
    for s in live.iter().filter(|s| s.status == ServerStatus::Running) {
        if s.agent_state.as_deref().is_some_and(|a| a != "running")
            || (s.agent_state.is_some() && !s.ready)
        {
            findings.push(finding(
                "drift",
                Verdict::Warn,
                format!("server {} ({})", s.id, s.name),
                format!(
                    "running in the database, the agent last said {} (ready: {})",
                    s.agent_state.clone().unwrap_or_default(),
                    s.ready
                ),
                "see the server's events; restart or reinstall it",
            ));
        }
    }
    Checked {
        findings,
        fixed: Vec::new(),
    }
}

/// Drift between the database and the Velocity proxy's registrations.
async fn velocity_drift(svc: &Services, opts: &Options) -> Result<Checked, DomainError> {
    let (mut findings, mut fixed) = (Vec::new(), Vec::new());
    if let Some(v) = &svc.velocity {
        let published = svc
            .db
            .call(|c| crate::domain::edge::published(c, crate::domain::edge::VELOCITY))
            .await?;
        let unready = svc
            .db
            .call(|c| crate::domain::edge::unready_server_names(c))
            .await?;
        match v.list().await {
            Ok(registered) => {
                // One rule with the reconciler: registered exactly while the game is ready.
                let extra: Vec<_> = registered
                    .iter()
                    .filter_map(|g| {
                        unready
                            .iter()
                            .find(|(_, n)| g.server_name.eq_ignore_ascii_case(n))
                            .map(|(id, _)| (*id, g.server_name.clone()))
                    })
                    .collect();
                if !extra.is_empty() && opts.fix {
                    crate::jobs::edge::withdraw_unready(svc, Some(&registered)).await?;
                    fixed.push(format!(
                        "unregistered {} server(s) whose game is not ready from Velocity",
                        extra.len()
                    ));
                } else {
                    for (id, name) in extra {
                        findings.push(finding(
                            "drift",
                            Verdict::Problem,
                            format!("velocity {name}"),
                            format!("registered with the proxy while server {id} is not running (players would reach a dead port)"),
                            "`zlh doctor --fix` (or the next reconcile) unregisters it",
                        ));
                    }
                }
                let missing: Vec<_> = published
                    .iter()
                    .filter(|r| {
                        !registered
                            .iter()
                            .any(|g| g.server_name.eq_ignore_ascii_case(&r.name))
                    })
                    .collect();
                if !missing.is_empty() && opts.fix {
                    crate::jobs::edge::reconcile_edge(svc).await?;
                    fixed.push(format!(
                        "registered {} server(s) with Velocity again",
                        missing.len()
                    ));
                } else {
                    for r in missing {
                        findings.push(finding(
                            "drift",
                            Verdict::Problem,
                            format!("velocity {}", r.name),
                            "published in the database, unknown to the proxy (restarted?)".into(),
                            "`zlh doctor --fix` (or the next reconcile) registers it again",
                        ));
                    }
                }
            }
            Err(e) => findings.push(finding(
                "drift",
                Verdict::Warn,
                "velocity".into(),
                format!("cannot list registrations: {e}"),
                "check the bridge",
            )),
        }
    }
    Ok(Checked { findings, fixed })
}

/// Edge records whose last publish failed.
async fn failed_edge(svc: &Services) -> Result<Checked, DomainError> {
    let mut findings = Vec::new();
    let failed_edge: Vec<crate::domain::edge::EdgeRecord> =
        svc.db.call(|c| crate::domain::edge::failed(c)).await?;
    for r in failed_edge {
        findings.push(finding(
            "drift",
            Verdict::Warn,
            format!("{} {}", r.target, r.name),
            r.last_error.unwrap_or_default(),
            "the reconciler retries it; check the target",
        ));
    }

    Ok(Checked {
        findings,
        fixed: Vec::new(),
    })
}

/// One server, counted: rows with its name, provisioning jobs, containers, installs.
async fn one_server(
    svc: &Services,
    id: i64,
    containers: Vec<i64>,
) -> Result<(ServerCheck, Finding), DomainError> {
    let sc = server_check(svc, id, containers).await?;
    let verdict = if sc.rows_with_name > 1
        || sc.provision_jobs > 1
        || sc.containers.len() > 1
        || sc.installs.unwrap_or(0) > 1
    {
        Verdict::Problem
    } else {
        Verdict::Ok
    };
    let found = finding(
        "server",
        verdict,
        format!("server {} ({})", sc.server_id, sc.name),
        format!(
            "{} row(s), {} provisioning job(s), {} container(s), {} install(s) reported by its agent",
            sc.rows_with_name,
            sc.provision_jobs,
            sc.containers.len(),
            sc.installs
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into())
        ),
        if verdict == Verdict::Ok {
            ""
        } else {
            "investigate the duplicates before anything else"
        },
    );
    Ok((sc, found))
}

async fn server_check(
    svc: &Services,
    id: i64,
    containers: Vec<i64>,
) -> Result<ServerCheck, DomainError> {
    let (s, rows, provision_jobs, by_state) = svc
        .db
        .call(move |c| {
            let s = servers::get(c, id)?
                .ok_or_else(|| DomainError::NotFound(format!("server {id}")))?;
            let rows = servers::rows_named(c, &s.name)?;
            let (provision, by_state) =
                crate::queue::lane_counts(c, &servers::lane(id), servers::JOB_PROVISION)?;
            Ok::<_, DomainError>((s, rows, provision, by_state))
        })
        .await?;
    let url = s
        .checkpoints
        .get("address")
        .and_then(|a| a["agent_url"].as_str())
        .map(String::from);
    let installs = match url {
        Some(u) => AgentClient::new(u, s.agent_token.clone(), format!("agent of server {id}"))
            .status()
            .await
            .ok()
            .map(|st| st.install_count),
        None => None,
    };
    Ok(ServerCheck {
        server_id: id,
        name: s.name,
        rows_with_name: rows,
        provision_jobs,
        jobs_by_state: by_state,
        containers,
        installs,
    })
}

/// The report as text for a terminal.
/// Files and directories in the data dir that group or others may read or write
/// (`zlh serve` tightens them at start; `--fix` does it now).
fn file_modes(data_dir: &std::path::Path, fix: bool, fixed: &mut Vec<String>) -> Finding {
    let subject = crate::config::display_path(data_dir);
    let (dir_mode, loose) = {
        use std::os::unix::fs::PermissionsExt;
        let dir_mode = std::fs::metadata(data_dir).map(|m| m.permissions().mode() & 0o777);
        (dir_mode, crate::db::files::loose(data_dir, 5))
    };
    let problem = |detail: String| {
        finding(
            "file modes",
            Verdict::Problem,
            subject.clone(),
            detail,
            "run `zlh doctor --fix` (or restart zlh serve): only zlh's user may read the data dir",
        )
    };
    match (dir_mode, loose) {
        (Err(e), _) | (_, Err(e)) => problem(format!("cannot check: {e}")),
        (Ok(mode), Ok(loose)) if mode & 0o077 != 0 || !loose.is_empty() => {
            if fix {
                let done = crate::db::files::private_dir(data_dir)
                    .and_then(|()| crate::db::files::tighten(data_dir));
                match done {
                    Ok(n) => {
                        fixed.push(format!(
                            "made {subject} 0700 and took group/other access off {n} path(s) in it"
                        ));
                        return finding(
                            "file modes",
                            Verdict::Ok,
                            subject,
                            "private to this user".into(),
                            "",
                        );
                    }
                    Err(e) => return problem(format!("tightening failed: {e}")),
                }
            }
            let shown: Vec<String> = loose.iter().map(|p| p.display().to_string()).collect();
            problem(format!(
                "the data dir is {mode:o}; readable or writable by group or others: {}",
                if shown.is_empty() {
                    "(only the data dir itself)".to_string()
                } else {
                    shown.join(", ")
                }
            ))
        }
        (Ok(_), Ok(_)) => finding(
            "file modes",
            Verdict::Ok,
            subject,
            "private to this user".into(),
            "",
        ),
    }
}

pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    for f in &r.findings {
        let mark = match f.verdict {
            Verdict::Ok => "ok     ",
            Verdict::Warn => "WARN   ",
            Verdict::Problem => "PROBLEM",
        };
        out.push_str(&format!(
            "{mark} [{}] {}: {}\n",
            f.check, f.subject, f.detail
        ));
        if !f.action.is_empty() {
            out.push_str(&format!("        → {}\n", f.action));
        }
    }
    for f in &r.fixed {
        out.push_str(&format!("fixed   {f}\n"));
    }
    if !r.findings.iter().any(|f| f.verdict != Verdict::Ok) && r.fixed.is_empty() {
        out.push_str("all checks passed\n");
    }
    out
}
