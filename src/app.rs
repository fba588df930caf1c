//! The application: `prepare` takes the instance lock and opens the database;
//! `Prepared::run` starts the worker pool, the scheduler and the HTTP server until
//! the shutdown future resolves. Tests start the app through [`serve`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::artifacts::{ArtifactError, Mirror};
use crate::config::{Config, hostname, machine_host_id};
use crate::db::{Db, DbError, now_ms};
pub use crate::http::AppState;
use crate::jobs::services::Services;
use crate::queue::{CronSpec, Handler, Queue, QueueError, Registry, Scheduler, Worker, store};
use crate::store::instance::{self, InstanceError, InstanceLock};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("creating data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making the files in {path} private to this user: {source}")]
    Modes {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("setting up the artifact mirror: {0}")]
    Artifacts(#[from] ArtifactError),
    #[error("starting the job queue: {0}")]
    Queue(#[from] QueueError),
    #[error("HTTP server: {0}")]
    Http(#[source] std::io::Error),
    #[error("HTTPS: {0}")]
    Tls(String),
}

/// Extra job kinds and periodic jobs to run besides the built-in ones.
#[derive(Default)]
pub struct ServeOptions {
    pub handlers: Vec<Arc<dyn Handler>>,
    pub crons: Vec<CronSpec>,
}

/// A data dir that this process now owns.
pub struct Prepared {
    config: Arc<Config>,
    db: Db,
    host: String,
    host_id: String,
    lock: InstanceLock,
}

/// Creates the data dir, takes the instance lock and opens (migrating) the database.
/// Fails at once, naming the holder, if another `zlh serve` owns the data dir.
pub fn prepare(config: Config) -> Result<Prepared, ServeError> {
    crate::db::files::private_dir(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let host = hostname();
    let listen = config.listen.to_string();
    let lock = instance::acquire(&config.data_dir, &host, Some(&listen))?;
    // A data dir written before files were kept private (or files copied in by
    // hand): nothing in it stays readable by group or others.
    match crate::db::files::tighten(&config.data_dir) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            count = n,
            data_dir = %config.data_dir.display(),
            "took group and other access off files and directories in the data dir"
        ),
        Err(source) => {
            return Err(ServeError::Modes {
                path: config.data_dir.clone(),
                source,
            });
        }
    }
    let db = Db::open_in(&config.data_dir)?;
    let host_id = config.host_id.clone().unwrap_or_else(machine_host_id);
    Ok(Prepared {
        config: Arc::new(config),
        db,
        host,
        host_id,
        lock,
    })
}

/// Prepares and runs the app on `listener` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    prepare(config)?
        .run(listener, shutdown, ServeOptions::default())
        .await
}

impl Prepared {
    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        options: ServeOptions,
    ) -> Result<(), ServeError> {
        // `--listen …:0`: the kernel picked the port. Everything that names this server
        // (the URL agents and scripts are given, the Origin check, the lock's holder)
        // uses the bound address, not port 0.
        let bound = listener.local_addr().map_err(ServeError::Http)?;
        let config = if self.config.listen.port() == 0 {
            self.lock.set_listen(&bound.to_string())?;
            Arc::new(Config {
                listen: bound,
                ..(*self.config).clone()
            })
        } else {
            self.config.clone()
        };
        // Before anything starts: a certificate that does not load fails the start.
        let tls = match config.tls.paths() {
            Some((cert, key)) => Some(Arc::new(
                crate::util::tls::Tls::load(cert, key).map_err(ServeError::Tls)?,
            )),
            None => None,
        };
        // Before anything starts: a mirror that cannot be set up fails the start.
        let mirror = Mirror::new(&config.data_dir, self.db.clone(), &config.artifacts)?;
        let services = Arc::new(Services::new(
            self.db.clone(),
            config.clone(),
            mirror.clone(),
        ));
        let mut registry = Registry::new();
        for h in crate::jobs::builtin_handlers(&config)
            .into_iter()
            .chain(crate::jobs::servers::handlers(services.clone()))
            .chain([crate::jobs::reconcile::handler(services.clone())])
            .chain(crate::jobs::worlds::handlers(services.clone()))
            .chain(crate::jobs::upgrade::handlers(services.clone()))
            .chain(crate::jobs::players::handlers(services.clone()))
            .chain(crate::jobs::version::handlers(services.clone()))
            .chain(options.handlers)
        {
            registry.register_arc(h);
        }
        let replay_safe: Vec<String> = registry
            .replay_safe_kinds()
            .into_iter()
            .map(String::from)
            .collect();

        let (host, host_id) = (self.host.clone(), self.host_id.clone());
        let local_ports = (config.local_port_min, config.local_port_max);
        let (boot, rescued, held) = self
            .db
            .write(move |tx| {
                let boot = instance::register(tx, &host, &host_id).map_err(DbError::from)?;
                // The embedded defaults: a local node and the built-in templates.
                crate::domain::nodes::ensure_local(tx, local_ports).map_err(QueueError::from)?;
                crate::domain::templates::ensure_builtins(tx).map_err(QueueError::from)?;
                // Everything still `running` belongs to a process that is gone.
                let rescued = store::rescue(tx, &format!("{}:", boot.boot_epoch), now_ms())?;
                // Compare the database with the world once at every start.
                store::enqueue(
                    tx,
                    &crate::queue::NewJob::new(
                        crate::jobs::reconcile::RECONCILE,
                        serde_json::json!({}),
                    )
                    .unique_key(format!("reconcile:boot:{}", boot.boot_epoch))
                    .max_attempts(3),
                    now_ms(),
                )?;
                let mut held = 0;
                if let Some(prev) = &boot.previous_host_id {
                    let reason = format!(
                        "database was last served by host identity '{prev}', now '{host_id}': \
                         check the world with `zlh doctor`, then release or cancel"
                    );
                    let kinds: Vec<&str> = replay_safe.iter().map(String::as_str).collect();
                    held = store::hold_unfinished(tx, &reason, &kinds)?;
                }
                Ok::<_, QueueError>((boot, rescued, held))
            })
            .await?;
        if rescued > 0 {
            tracing::warn!(rescued, "rescued jobs left running by the previous process");
        }
        if held > 0 {
            tracing::warn!(
                held,
                previous_host = ?boot.previous_host_id,
                "host identity changed: side-effecting jobs are held until released (`zlh jobs release`)"
            );
        }

        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let stop = CancellationToken::new();
        let worker = Worker::new(
            self.db.clone(),
            registry,
            boot.boot_epoch,
            config.worker_config(),
        );
        let handle = worker.handle();
        let worker_task = tokio::spawn(worker.run(stop.child_token()));
        let crons: Vec<CronSpec> = crate::jobs::builtin_crons(&config)
            .into_iter()
            .chain([CronSpec::new(
                crate::jobs::reconcile::RECONCILE,
                std::time::Duration::from_secs(config.reconcile_secs),
                crate::jobs::reconcile::RECONCILE,
            )])
            .chain(options.crons)
            .collect();
        let scheduler = Scheduler::new(self.db.clone(), crons, Some(handle.clone()));
        let scheduler_task = tokio::spawn(scheduler.run(stop.child_token()));
        let schedules_task = tokio::spawn(crate::jobs::worlds::run_scheduler(
            self.db.clone(),
            Some(handle.clone()),
            Duration::from_millis(config.schedule_tick_ms),
            stop.child_token(),
        ));
        let heartbeat_task = tokio::spawn(instance_heartbeat(
            self.db.clone(),
            boot.boot_epoch,
            stop.child_token(),
        ));

        let state = AppState {
            config: config.clone(),
            db: self.db.clone(),
            queue: Queue::new(self.db.clone(), Some(handle)),
            mirror,
            services,
            boot: Arc::new(boot.clone()),
            host: Arc::from(self.host.as_str()),
            ready: Arc::new(AtomicBool::new(false)),
            started_at: now_ms(),
            ui: Arc::default(),
            shutdown: stop.clone(),
        };
        let ready = state.ready.clone();
        let app = crate::http::router(state);
        let addr = listener.local_addr().map_err(ServeError::Http)?;
        tracing::info!(
            %addr,
            data_dir = %crate::config::display_path(&config.data_dir),
            boot_epoch = boot.boot_epoch,
            "zlh serving"
        );
        ready.store(true, Ordering::SeqCst);

        let drain = stop.clone();
        let ready_flag = ready.clone();
        match crate::http::ui::prepare_setup(&self.db).await {
            Ok(Some(token)) => {
                let scheme = config.scheme();
                tracing::warn!(
                    "first-run setup: no account can sign in yet. Open {scheme}://{addr}/setup and \
                     enter the one-time setup token {token} (a new one is made at every start \
                     until setup is done)"
                );
                crate::shipping::banner::print_setup_banner(scheme, &addr, &token);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "preparing the first-run setup token"),
        }
        let limits = config.http.limits();
        // The SIGHUP handler is in place before the first connection is accepted.
        let reload_task = match &tls {
            Some(t) => {
                use tokio::signal::unix::{SignalKind, signal};
                let hup = signal(SignalKind::hangup()).map_err(ServeError::Http)?;
                Some(tokio::spawn(reload_on_sighup(
                    t.clone(),
                    hup,
                    stop.child_token(),
                )))
            }
            None => None,
        };
        let app = app.layer(axum::middleware::from_fn(move |req, next| {
            crate::util::listener::request_timeout(limits.request_timeout, req, next)
        }));
        let http = crate::util::listener::serve(listener, app, limits, tls, async move {
            shutdown.await;
            tracing::info!("shutting down: draining HTTP and running jobs");
            ready_flag.store(false, Ordering::SeqCst);
            drain.cancel();
        });
        let http_result = http.await.map_err(ServeError::Http);
        stop.cancel();

        match worker_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "job worker stopped with an error"),
            Err(e) => tracing::error!(error = %e, "job worker task failed"),
        }
        let _ = scheduler_task.await;
        let _ = schedules_task.await;
        let _ = heartbeat_task.await;
        if let Some(t) = reload_task
            && let Err(e) = t.await
        {
            tracing::error!(error = %e, "certificate reload task failed");
        }
        let epoch = boot.boot_epoch;
        if let Err(e) = self
            .db
            .write(move |tx| instance::mark_stopped(tx, epoch).map_err(DbError::from))
            .await
        {
            tracing::error!(error = %e, "recording shutdown in the instance row");
        }
        tracing::info!("zlh stopped");
        http_result
    }
}

/// SIGHUP reads `tls.cert` / `tls.key` again (after a renewal); the listener stays up
/// and a pair that does not load leaves the old one serving.
async fn reload_on_sighup(
    tls: Arc<crate::util::tls::Tls>,
    mut hup: tokio::signal::unix::Signal,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: reloaded the TLS certificate and key"),
                    Err(e) => tracing::error!(
                        error = %e,
                        "SIGHUP: the new TLS certificate and key were refused; the previous pair keeps serving"
                    ),
                }
            }
        }
    }
}

async fn instance_heartbeat(db: Db, boot_epoch: i64, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = db
                    .write(move |tx| instance::heartbeat(tx, boot_epoch).map_err(DbError::from))
                    .await
                {
                    tracing::error!(error = %e, "instance heartbeat failed");
                }
            }
        }
    }
}
