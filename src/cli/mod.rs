//! The command line: `zlh serve | migrate | backup | jobs | config | artifacts | bench`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

pub mod bench;
pub mod worlds;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat, Sources};
use crate::db::{Db, now_ms};
use crate::queue::{self, JobFilter, JobState};
use crate::util::format_ts;

#[derive(Debug, Parser)]
#[command(
    name = "zlh",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BUILD_GIT_COMMIT"), ")"),
    about = "Game-server control plane: one binary, one SQLite file"
)]
pub struct Cli {
    /// Config file (default: ./zlh.toml when it exists).
    #[arg(long, global = true, env = "ZLH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [env: ZLH_DATA_DIR] [default: ./zlh-data].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: API, job queue, scheduler.
    Serve(ServeArgs),
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Write a consistent copy of the database to FILE (safe while serving).
    Backup {
        file: PathBuf,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Restore the database from FILE (refused while `zlh serve` runs); unfinished
    /// side-effecting jobs are held until released.
    Restore { file: PathBuf },
    /// Check the world against the database: duplicates, orphans, stuck servers and
    /// jobs, drift, the executor. Exits non-zero when something is wrong.
    Doctor {
        #[arg(long)]
        json: bool,
        /// Also count one server's rows, jobs, containers and installs.
        #[arg(long, value_name = "ID")]
        server: Option<i64>,
        /// Perform the safe repairs and say what was done.
        #[arg(long)]
        fix: bool,
        /// With --fix: destroy containers no server owns (they may hold a world).
        #[arg(long, requires = "fix")]
        delete_orphans: bool,
    },
    /// Inspect and steer the job queue.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// World backups of game servers: list, create, restore, protect, delete, retention.
    Backups {
        #[command(subcommand)]
        command: crate::cli::worlds::BackupsCommand,
    },
    /// Server schedules (backup, restart with a warning, console command): list, add, remove.
    Schedules {
        #[command(subcommand)]
        command: crate::cli::worlds::SchedulesCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run the agent inside a game container (installs, supervises and probes one game).
    Agent(AgentArgs),
    /// The artifact mirror served at /artifacts/… (server jars, JREs).
    Artifacts {
        #[command(subcommand)]
        command: ArtifactsCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Install zlh as a systemd service (root): the `zlh` user, /var/lib/zlh,
    /// /etc/zlh/zlh.toml, /usr/local/bin/zlh and a hardened unit, enabled and started.
    Install(crate::shipping::install::InstallArgs),
    /// Remove the systemd service, the binary and the user; keeps the data unless --purge.
    Uninstall(crate::shipping::install::UninstallArgs),
    /// Nodes: enroll a Proxmox VE host with one command.
    Node {
        #[command(subcommand)]
        command: crate::shipping::enroll::NodeCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Listen address [env: ZLH_LISTEN] [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Host identity [env: ZLH_HOST_ID] [default: the machine id].
    #[arg(long, value_name = "ID")]
    pub host_id: Option<String>,
    /// Jobs run at once [env: ZLH_QUEUE_WORKERS] [default: 16].
    #[arg(long, value_name = "N")]
    pub workers: Option<u32>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0:18888", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Agent directory (payload, cache, the server directory, logs).
    #[arg(long, default_value = "/opt/zlh-agent", value_name = "DIR")]
    pub dir: PathBuf,
    /// Bootstrap bearer token (until a /config installs the server's own).
    #[arg(
        long,
        env = "ZLH_AGENT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Read the bootstrap token from this file instead.
    #[arg(
        long,
        env = "ZLH_AGENT_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// Delays before restarting after consecutive crashes, then `error`.
    #[arg(long, default_value = "30s,60s,120s", value_delimiter = ',', value_parser = crate::util::parse_duration)]
    pub crash_backoff: Vec<std::time::Duration>,
    /// Uptime after which the consecutive-crash count resets.
    #[arg(long, default_value = "30s", value_parser = crate::util::parse_duration)]
    pub stable_uptime: std::time::Duration,
    /// Time the stop command gets before SIGTERM.
    #[arg(long, default_value = "30s", value_parser = crate::util::parse_duration)]
    pub stop_timeout: std::time::Duration,
    /// Time SIGTERM gets before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = crate::util::parse_duration)]
    pub term_timeout: std::time::Duration,
    /// Readiness probe interval.
    #[arg(long, default_value = "1s", value_parser = crate::util::parse_duration)]
    pub probe_interval: std::time::Duration,
    /// Time a client has to send a request's headers.
    #[arg(long, default_value = "10s", value_parser = crate::util::parse_duration)]
    pub header_timeout: std::time::Duration,
    /// A connection with no request in flight for this long is closed.
    #[arg(long, default_value = "5s", value_parser = crate::util::parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// Time a request has to start its answer (the console stream is not cut by it).
    #[arg(long, default_value = "60s", value_parser = crate::util::parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Connections served at once.
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,
    /// Console streams open at once (more are refused with 429).
    #[arg(long, default_value_t = 16)]
    pub max_streams: usize,
    /// When the agent runs as root, the unprivileged user the game runs as (created
    /// with `useradd --system` if missing).
    #[arg(long, default_value = "zlh-game", value_name = "USER")]
    pub game_user: String,
    /// Run the game as the agent's own user, even as root (a local node's agents: the
    /// data dir is private to `zlh serve`'s user, so run that as an unprivileged one).
    #[arg(long, conflicts_with = "game_user")]
    pub game_as_agent_user: bool,
    /// Where `POST /upgrade` installs the new binary before restarting from it
    /// (default: this executable, replaced atomically).
    #[arg(long, value_name = "FILE")]
    pub upgrade_path: Option<PathBuf>,
    /// Largest file an upload may send through the files API (and the most an archive
    /// extraction may unpack), in bytes.
    #[arg(long, default_value_t = crate::agentd::DEFAULT_MAX_UPLOAD, value_name = "BYTES")]
    pub max_upload_bytes: u64,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        #[arg(long)]
        state: Option<JobState>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one job with its errors.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Run a failed, cancelled or waiting job again now.
    Retry { id: i64 },
    /// Cancel a job (a running one stops at its next check), or every held job.
    Cancel {
        #[arg(required_unless_present = "held", conflicts_with = "held")]
        id: Option<i64>,
        /// Cancel every held job.
        #[arg(long)]
        held: bool,
    },
    /// Release held jobs so they run.
    Release {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Release every held job.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user.
    Add {
        username: String,
        /// Give the user every right (see every server, manage nodes and templates).
        #[arg(long)]
        admin: bool,
        /// Read a password for the admin UI from standard input (first line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's UI password, read from standard input (first line); ends the
    /// user's UI sessions.
    Passwd { username: String },
    /// List users.
    List,
    /// Show a user's quota and what they use; with options, set it (admins are not
    /// limited). A value of `default` goes back to the configured `quota.*`.
    Quota {
        username: String,
        /// Servers the user may have, or `default`.
        #[arg(long, value_parser = parse_limit)]
        max_servers: Option<Limit>,
        /// Memory (MiB) all their servers may reserve together, or `default`.
        #[arg(long, value_parser = parse_limit)]
        max_memory_mb: Option<Limit>,
    },
}

/// A quota value on the command line: a number, or `default`.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    Default,
    Max(i64),
}

fn parse_limit(s: &str) -> Result<Limit, String> {
    if s == "default" {
        return Ok(Limit::Default);
    }
    s.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(Limit::Max)
        .ok_or_else(|| format!("'{s}': a whole number of at least 0, or 'default'"))
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token for a user; it is printed once and stored only as a hash.
    Create {
        #[arg(long)]
        user: String,
        /// What the token is for.
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective settings.
    Check(ServeArgs),
}

#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// Import FILE into the mirror as PATH_IN_MIRROR (replacing what is there),
    /// e.g. `zlh artifacts add minecraft/vanilla/1.21.4/server.jar ./server.jar`.
    Add {
        #[arg(value_name = "PATH_IN_MIRROR")]
        path: String,
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// List the artifacts in the mirror.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Enqueue and drain no-op jobs; print jobs/s (durable, synchronous=FULL).
    Queue {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
        /// Scratch directory (default: the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// A command failure: printed as `error: …` with exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Serve(#[from] crate::app::ServeError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    #[error(transparent)]
    Backup(#[from] crate::store::backup::BackupError),
    #[error(transparent)]
    Bench(#[from] crate::cli::bench::BenchError),
    #[error(transparent)]
    Artifact(#[from] crate::artifacts::ArtifactError),
    #[error(transparent)]
    Domain(#[from] crate::domain::DomainError),
    #[error(transparent)]
    Restore(#[from] crate::store::backup::RestoreError),
    #[error("no zlh database at {dir}; pass --data-dir or set ZLH_DATA_DIR{running}")]
    NoDatabase { dir: String, running: String },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Agent(#[from] crate::agentd::AgentError),
    #[error(transparent)]
    Install(#[from] crate::shipping::install::InstallError),
    #[error("reading a password from standard input: {0}")]
    PasswordInput(String),
    #[error("reading the agent token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn main() -> ExitCode {
    // Everything zlh writes (database, backups, keys, agent files, and what a local
    // agent's game writes) is for zlh's user alone.
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli, serve: Option<&ServeArgs>) -> Result<Config, ConfigError> {
    let mut sources = Sources::from_process(cli.config.clone());
    if let Some(d) = &cli.data_dir {
        sources = sources.flag("data_dir", d.display(), "--data-dir");
    }
    if let Some(a) = serve {
        if let Some(l) = a.listen {
            sources = sources.flag("listen", l, "--listen");
        }
        if let Some(h) = &a.host_id {
            sources = sources.flag("host_id", h, "--host-id");
        }
        if let Some(w) = a.workers {
            sources = sources.flag("queue.workers", w, "--workers");
        }
    }
    let config = Config::load(&sources)?;
    // Before any database is opened: its secrets are sealed under this key.
    if let Some(path) = &config.secret_key_file {
        crate::db::secret::set_key_file(path.clone());
    }
    Ok(config)
}

fn init_logging(format: LogFormat, color: crate::config::LogColor) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ZLH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color.enabled())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The first line of standard input, without its line ending (for `--password-stdin`
/// and `user passwd`: never an argument, which `ps` would show).
fn read_password() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::PasswordInput(e.to_string()))?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(CliError::PasswordInput(
            "nothing was read: pipe the password in, e.g. `read -rs P; printf '%s\\n' \"$P\" | zlh user passwd NAME`".into(),
        ));
    }
    Ok(password)
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// Opens (creating if needed) the database in the data dir.
fn open_or_create(config: &Config) -> Result<Db, CliError> {
    crate::db::files::private_dir(&config.data_dir).map_err(|source| {
        crate::app::ServeError::DataDir {
            path: config.data_dir.clone(),
            source,
        }
    })?;
    Ok(Db::open_in(&config.data_dir)?)
}

/// Opens the database of an existing data dir (never creates one).
fn open_existing(config: &Config) -> Result<Db, CliError> {
    require_database(config)?;
    Ok(Db::open(&config.db_path())?)
}

/// Refuses a data dir without a database (a command run from the wrong directory must
/// not quietly create an empty one), naming the data dirs of running `zlh serve`s.
fn require_database(config: &Config) -> Result<(), CliError> {
    if config.db_path().exists() {
        return Ok(());
    }
    let running: Vec<String> = crate::store::instance::running_data_dirs()
        .into_iter()
        .map(|(dir, h)| format!("{} ({h})", dir.display()))
        .collect();
    let running = if running.is_empty() {
        "; no running `zlh serve` was found (`zlh serve` or `zlh migrate` creates a database)"
            .to_string()
    } else {
        format!("; `zlh serve` is using {}", running.join(" and "))
    };
    Err(CliError::NoDatabase {
        dir: crate::config::display_path(&config.data_dir),
        running,
    })
}

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match &cli.command {
        Command::Serve(args) => {
            let config = load_config(&cli, Some(args))?;
            init_logging(config.log_format, config.log_color);
            serve(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Node { command } => {
            let config = load_config(&cli, None)?;
            let db = open_existing(&config)?;
            print!("{}", crate::shipping::enroll::run(&db, &config, command)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Install(args) => {
            print!("{}", crate::shipping::install::install(args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall(args) => {
            print!("{}", crate::shipping::install::uninstall(args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let config = load_config(&cli, None)?;
            let db = open_or_create(&config)?;
            println!(
                "database {} is at schema version {}",
                db.path().display(),
                crate::db::latest_schema_version()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { file, force } => {
            let config = load_config(&cli, None)?;
            require_database(&config)?;
            let info = crate::store::backup::backup_to(&config.db_path(), file, *force)?;
            println!(
                "backup written to {} ({} bytes, integrity ok)",
                info.path.display(),
                info.bytes
            );
            println!(
                "its secrets open only with the key {}: keep a copy of that file apart from the backup",
                config.secret_key_path().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor {
            json,
            server,
            fix,
            delete_orphans,
        } => {
            let config = load_config(&cli, None)?;
            let db = open_existing(&config)?;
            let opts = crate::doctor::Options {
                server: *server,
                fix: *fix,
                delete_orphans: *delete_orphans,
            };
            let report = runtime()?.block_on(async move {
                let config = std::sync::Arc::new(config);
                let mirror =
                    crate::artifacts::Mirror::new(&config.data_dir, db.clone(), &config.artifacts)
                        .map_err(|e| {
                            CliError::Domain(crate::domain::DomainError::Conflict(e.to_string()))
                        })?;
                let svc = crate::jobs::services::Services::new(db, config, mirror);
                Ok::<_, CliError>(crate::doctor::run(&svc, &opts).await?)
            })?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", crate::doctor::render_text(&report));
            }
            Ok(if report.has_problems() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Restore { file } => {
            let config = load_config(&cli, None)?;
            let r =
                crate::store::backup::restore(file, &config.data_dir, crate::jobs::REPLAY_SAFE)?;
            println!(
                "restored {} into {}",
                file.display(),
                crate::config::display_path(&config.data_dir)
            );
            println!(
                "{} unfinished job(s) are held: run `zlh doctor`, then `zlh jobs release --all` or `zlh jobs cancel --held`",
                r.held
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { command } => {
            let config = load_config(&cli, None)?;
            let db = open_existing(&config)?;
            jobs(&db, command)
        }
        Command::Backups { command } => {
            let config = load_config(&cli, None)?;
            let db = open_existing(&config)?;
            Ok(crate::cli::worlds::backups(
                &db,
                command,
                crate::domain::users::Quota::from(&config.quota),
            )?)
        }
        Command::Schedules { command } => {
            let config = load_config(&cli, None)?;
            let db = open_existing(&config)?;
            Ok(crate::cli::worlds::schedules(&db, command)?)
        }
        Command::Artifacts { command } => {
            let config = load_config(&cli, None)?;
            artifacts(&config, command)
        }
        Command::Config {
            command: ConfigCommand::Check(args),
        } => {
            let config = load_config(&cli, Some(args))?;
            for w in config.warnings() {
                eprintln!("warning: {w}");
            }
            println!("# configuration is valid; effective settings:");
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::User { command } => {
            let config = load_config(&cli, None)?;
            let db = open_existing(&config)?;
            let mut conn = db.conn()?;
            match command {
                UserCommand::Add {
                    username,
                    admin,
                    password_stdin,
                } => {
                    let password = password_stdin.then(read_password).transpose()?;
                    let u = crate::db::write_tx(&mut conn, |tx| {
                        let phc = password
                            .as_deref()
                            .map(crate::domain::users::hash_password)
                            .transpose()?;
                        crate::domain::users::create_user(tx, username, *admin, phc.as_deref())
                    })?;
                    println!(
                        "user {} added (id {}{})",
                        u.username,
                        u.id,
                        if u.is_admin { ", admin" } else { "" }
                    );
                }
                UserCommand::Passwd { username } => {
                    let password = read_password()?;
                    let ended = crate::db::write_tx(&mut conn, |tx| {
                        let u =
                            crate::domain::users::get_by_name(tx, username)?.ok_or_else(|| {
                                crate::domain::DomainError::NotFound(format!("user '{username}'"))
                            })?;
                        crate::domain::users::set_password(tx, u.id, &password)
                    })?;
                    println!("password of {username} set; {ended} UI session(s) ended");
                }
                UserCommand::Quota {
                    username,
                    max_servers,
                    max_memory_mb,
                } => {
                    use crate::domain::users;
                    let defaults = crate::domain::users::Quota::from(&config.quota);
                    let (user, quota, usage) = crate::db::write_tx(&mut conn, |tx| {
                        let u = users::get_by_name(tx, username)?.ok_or_else(|| {
                            crate::domain::DomainError::NotFound(format!("user '{username}'"))
                        })?;
                        if max_servers.is_some() || max_memory_mb.is_some() {
                            let own = users::own_quota(tx, u.id)?;
                            let pick = |l: &Option<Limit>, current: Option<i64>| match l {
                                None => current,
                                Some(Limit::Default) => None,
                                Some(Limit::Max(n)) => Some(*n),
                            };
                            users::set_quota(
                                tx,
                                u.id,
                                users::Quota {
                                    max_servers: pick(max_servers, own.max_servers),
                                    max_memory_mb: pick(max_memory_mb, own.max_memory_mb),
                                },
                            )?;
                        }
                        let q = users::quota_of(tx, &u, defaults)?;
                        let used = users::usage(tx, u.id)?;
                        Ok::<_, crate::domain::DomainError>((u, q, used))
                    })?;
                    let show = |v: Option<i64>| v.map_or("no limit".to_string(), |n| n.to_string());
                    println!(
                        "{}{}: servers {} of {}, memory {} of {} MiB",
                        user.username,
                        if user.is_admin {
                            " (admin, not limited)"
                        } else {
                            ""
                        },
                        usage.servers,
                        show(quota.max_servers),
                        usage.memory_mb,
                        show(quota.max_memory_mb)
                    );
                }
                UserCommand::List => {
                    for u in crate::domain::users::list(&conn)? {
                        println!(
                            "{:>5}  {}{}",
                            u.id,
                            u.username,
                            if u.is_admin { "  (admin)" } else { "" }
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            command: TokenCommand::Create { user, name },
        } => {
            let config = load_config(&cli, None)?;
            let db = open_existing(&config)?;
            let mut conn = db.conn()?;
            let secret = crate::db::write_tx(&mut conn, |tx| {
                let u = crate::domain::users::get_by_name(tx, user)?.ok_or_else(|| {
                    crate::domain::DomainError::NotFound(format!(
                        "user '{user}' (add it with `zlh user add {user}`)"
                    ))
                })?;
                crate::domain::users::create_token(tx, u.id, name).map(|(s, _)| s)
            })?;
            // On stderr: scripts capture stdout and expect only the token there.
            let server = match crate::store::instance::holder(&config.data_dir) {
                Some(h) => match &h.listen {
                    Some(l) => format!("the zlh serve at http://{l} (pid {})", h.pid),
                    None => format!("the zlh serve with pid {}", h.pid),
                },
                None => "no zlh serve is running on it now".to_string(),
            };
            eprintln!(
                "API token for {user} in {} ({server}; shown once, store it now):",
                crate::config::display_path(&config.data_dir)
            );
            println!("{secret}");

            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(args) => {
            init_logging(LogFormat::Text, crate::config::LogColor::Auto);
            agent(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Queue {
                    jobs,
                    concurrency,
                    json,
                    dir,
                },
        } => {
            let args = crate::cli::bench::QueueBenchArgs {
                jobs: *jobs,
                concurrency: *concurrency,
                dir: dir.clone(),
            };
            let report = runtime()?.block_on(crate::cli::bench::queue(args))?;
            if *json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                println!(
                    "zlh queue, {} no-op jobs, concurrency {}, synchronous=FULL:\n  enqueue one by one: {:>10.0} jobs/s\n  enqueue batched:    {:>10.0} jobs/s\n  processing:         {:>10.0} jobs/s",
                    report.jobs,
                    report.concurrency,
                    report.enqueue_one_by_one_jobs_per_s,
                    report.enqueue_batched_jobs_per_s,
                    report.process_jobs_per_s
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve(config: Config) -> Result<(), CliError> {
    // The lock comes first: a second `zlh serve` must name the holder, not trip over
    // the listen address the first one already has.
    let prepared = crate::app::prepare(config.clone())?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| CliError::Bind {
                addr: config.listen,
                source,
            })?;
        prepared
            .run(listener, shutdown_signal(), Default::default())
            .await?;
        Ok(())
    })
}

fn agent(args: &AgentArgs) -> Result<(), CliError> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| CliError::TokenFile {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    }
    .filter(|t| !t.is_empty());
    let opts = crate::agentd::AgentOptions {
        dir: args.dir.clone(),
        bootstrap_token: token,
        crash_backoff: args.crash_backoff.clone(),
        stable_uptime: args.stable_uptime,
        stop_timeout: args.stop_timeout,
        term_timeout: args.term_timeout,
        probe_interval: args.probe_interval,
        http: crate::util::listener::Limits {
            header_timeout: args.header_timeout,
            idle_timeout: args.idle_timeout,
            request_timeout: args.request_timeout,
            max_connections: args.max_connections,
        },
        max_streams: args.max_streams,
        game_user: (!args.game_as_agent_user).then(|| args.game_user.clone()),
        upgrade_path: args.upgrade_path.clone(),
        max_upload_bytes: args.max_upload_bytes,
    };
    let listen = args.listen;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| CliError::Bind {
                addr: listen,
                source,
            })?;
        crate::agentd::run(opts, listener, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn artifacts(config: &Config, command: &ArtifactsCommand) -> Result<ExitCode, CliError> {
    match command {
        ArtifactsCommand::Add { path, file } => {
            // Checked before anything is created, so a typo leaves no data dir behind.
            crate::artifacts::validate_path(path)?;
            std::fs::metadata(file).map_err(|source| crate::artifacts::ArtifactError::Io {
                what: "reading",
                path: file.clone(),
                source,
            })?;
            crate::db::files::private_dir(&config.data_dir).map_err(|source| {
                crate::app::ServeError::DataDir {
                    path: config.data_dir.clone(),
                    source,
                }
            })?;
            let db = Db::open_in(&config.data_dir)?;
            let mirror = crate::artifacts::Mirror::offline(&config.data_dir, db)?;
            let info = mirror.add_file(path, file)?;
            println!("added {}", info.path);
            println!("  sha256: {}", info.sha256);
            println!("  size:   {} bytes", info.size);
        }
        ArtifactsCommand::List { json } => {
            let db = open_existing(config)?;
            let list = crate::artifacts::list(&*db.conn()?)?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else if list.is_empty() {
                println!("no artifacts");
            } else {
                println!("{:<56} {:>12}  {:<64}  SOURCE", "PATH", "SIZE", "SHA256");
                for a in list {
                    println!(
                        "{:<56} {:>12}  {:<64}  {}",
                        a.path, a.size, a.sha256, a.source
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn jobs(db: &Db, command: &JobsCommand) -> Result<ExitCode, CliError> {
    let mut conn = db.conn()?;
    match command {
        JobsCommand::List {
            state,
            kind,
            limit,
            json,
        } => {
            let list = queue::list(
                &conn,
                &JobFilter {
                    state: *state,
                    kind: kind.clone(),
                    limit: *limit,
                    ..Default::default()
                },
            )?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else if list.is_empty() {
                println!("no jobs");
            } else {
                println!(
                    "{:>8}  {:<10} {:<24} {:>7}  {:<20} {:<24} last error",
                    "ID", "STATE", "KIND", "ATTEMPT", "RUN AT", "LANE"
                );
                for j in list {
                    println!(
                        "{:>8}  {:<10} {:<24} {:>3}/{:<3}  {:<20} {:<24} {}",
                        j.id,
                        j.state.as_str(),
                        j.kind,
                        j.attempt,
                        j.max_attempts,
                        format_ts(j.run_at),
                        j.lane.as_deref().unwrap_or("-"),
                        j.errors.last().map(|e| e.error.as_str()).unwrap_or("")
                    );
                }
            }
        }
        JobsCommand::Show { id, json } => {
            let job = queue::get(&conn, *id)?.ok_or(queue::QueueError::NotFound(*id))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&job).unwrap_or_default());
            } else {
                println!("job {} ({})", job.id, job.kind);
                println!("  state:        {}", job.state);
                if let Some(r) = &job.held_reason {
                    println!("  held because: {r}");
                }
                println!("  attempt:      {} of {}", job.attempt, job.max_attempts);
                println!("  run at:       {}", format_ts(job.run_at));
                println!("  created:      {}", format_ts(job.created_at));
                if let Some(l) = &job.lane {
                    println!("  lane:         {l}");
                }
                if let Some(k) = &job.unique_key {
                    println!("  unique key:   {k}");
                }
                if let Some(l) = &job.lock_by {
                    println!("  worker:       {l}");
                }
                if let Some(f) = job.finished_at {
                    println!("  finished:     {}", format_ts(f));
                }
                println!("  payload:      {}", job.payload);
                if let Some(c) = &job.checkpoint {
                    println!("  checkpoint:   {c}");
                }
                for e in &job.errors {
                    println!(
                        "  error (attempt {} at {}): {}",
                        e.attempt,
                        format_ts(e.at),
                        e.error
                    );
                }
            }
        }
        JobsCommand::Retry { id } => {
            crate::db::write_tx(&mut conn, |tx| queue::retry(tx, *id, now_ms()))?;
            println!("job {id} will run again now");
        }
        JobsCommand::Cancel { id, held } => {
            if *held {
                let n = crate::db::write_tx(&mut conn, |tx| queue::cancel_held(tx, now_ms()))?;
                println!("cancelled {n} held job(s)");
            } else if let Some(id) = id {
                let effect = crate::db::write_tx(&mut conn, |tx| queue::cancel(tx, *id, now_ms()))?;
                match effect {
                    queue::CancelEffect::Cancelled => println!("job {id} cancelled"),
                    queue::CancelEffect::Requested => println!(
                        "job {id} is running: cancel requested; it stops at its next check and ends cancelled"
                    ),
                }
            }
        }
        JobsCommand::Release { id, all } => {
            let target = if *all { None } else { *id };
            let n = crate::db::write_tx(&mut conn, |tx| queue::release(tx, target, now_ms()))?;
            println!("released {n} held job(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses a job state for clap.
impl clap::builder::ValueParserFactory for JobState {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<JobState>())
    }
}
