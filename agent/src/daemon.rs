//! `hostwatch run`: the daemon's life cycle. Binds the endpoint, starts the
//! scheduler, the configured compression tunnels and, when enabled, the
//! shaping proxy, tells systemd when ready,
//! reloads on SIGHUP, stops on SIGTERM or SIGINT within 2 s.
//!
//! Reads the config file (again on SIGHUP); needs the listen socket, the
//! tunnels' sockets and whatever the enabled collectors need.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hostwatch_collectors::{ALL, HostPaths};
use hostwatch_shaping::proxy::metrics::SOURCE as SHAPER_SOURCE;
use hostwatch_shaping::proxy::{Publish, Shaper};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::agent_metrics::{self, AgentMetrics};
use crate::cli::{self, RunArgs};
use crate::compression::Compression;
use crate::config::{self, Config};
use crate::scheduler::{Scheduler, Shared};
use crate::web_config::Security;
use crate::{logging, server, systemd};

/// The runtime waits this long for blocking collections at exit; a collection
/// stuck in the kernel (a hung NFS read, say) must not hold the stop.
const BLOCKING_GRACE: Duration = Duration::from_millis(200);

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let path = args.config_path();
    let mut config = config::load(path.as_deref())?;
    if let Some(listen) = args.listen {
        config.agent.listen = listen;
    }
    if args.web_config_file.is_some() {
        config.agent.web_config_file.clone_from(&args.web_config_file);
    }
    let security = match &config.agent.web_config_file {
        Some(path) => Security::load(path)?,
        None => Security::open(),
    };
    logging::init(args.log_format.unwrap_or(config.agent.log_format));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // Scrapes and collection are light; a fleet agent must not spawn a
        // thread per core on a 192-core host.
        .worker_threads(2)
        .thread_name("hostwatch")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let daemon = Daemon {
        path,
        paths: args.paths(),
        config,
        listen_override: args.listen,
        security: Arc::new(security),
    };
    let result = runtime.block_on(daemon.run());
    runtime.shutdown_timeout(BLOCKING_GRACE);
    result
}

struct Daemon {
    path: Option<PathBuf>,
    paths: HostPaths,
    config: Config,
    listen_override: Option<std::net::SocketAddr>,
    security: Arc<Security>,
}

impl Daemon {
    fn context(&self, shared: &Shared) -> hostwatch_collectors::Context {
        hostwatch_collectors::Context {
            paths: self.paths.clone(),
            config: Arc::new(self.config.collectors.clone()),
            facts: Arc::clone(&shared.facts),
        }
    }

    async fn run(mut self) -> anyhow::Result<()> {
        let requested = self.config.agent.listen;
        let listener = TcpListener::bind(requested)
            .await
            .with_context(|| format!("cannot listen on {requested}"))?;
        // With port 0 the kernel picks one; log the one actually bound.
        let listen = listener.local_addr().unwrap_or(requested);
        let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

        let shared = Arc::new(Shared::default());
        let mut agent = AgentMetrics::default();
        shared.store.publish(agent_metrics::SOURCE, Arc::new(agent.to_set()));
        let mut scheduler = Scheduler::start(ALL, &self.context(&shared), &shared);
        let mut compression = Compression::start(&self.config.compression);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let shaper = self.start_shaper(&shared).await?;
        info!(%listen, config = %cli::describe(self.path.as_deref()), version = cli::VERSION, "hostwatch started");

        tokio::spawn(systemd::supervise(Arc::clone(&shared)));

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let http = self.config.http.clone();
        let server = tokio::spawn({
            let (shared, security) = (Arc::clone(&shared), Arc::clone(&self.security));
            async move {
                server::serve(listener, &http, security, shared, async {
                    let _ = stopped.await;
                })
                .await;
            }
        });

        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                _ = tick.tick() => compression.tick(&shared),
                _ = hangup.recv() => {
                    systemd::reloading();
                    scheduler = self.reload(scheduler, &mut compression, &shared, &mut agent).await;
                    shared.store.publish(agent_metrics::SOURCE, Arc::new(agent.to_set()));
                    systemd::ready();
                }
            }
        }

        info!("stopping");
        systemd::stopping();
        let _ = stop.send(());
        compression.stop().await;
        scheduler.stop().await;
        if let Some(shaper) = shaper {
            shaper.stop().await;
        }
        // The server drains for at most a second; this bound is a backstop.
        let _ = tokio::time::timeout(Duration::from_millis(1500), server).await;
        Ok(())
    }

    /// Starts the shaping proxy when `[shaping]` enables it; its metrics are
    /// published in the store under their own source, like a collector's.
    async fn start_shaper(&self, shared: &Arc<Shared>) -> anyhow::Result<Option<Shaper>> {
        if !self.config.shaping.enabled {
            return Ok(None);
        }
        let store = Arc::clone(shared);
        let publish: Publish = Box::new(move |set| store.store.publish(SHAPER_SOURCE, set));
        let shaper = Shaper::start(&self.config.shaping, Arc::clone(&shared.facts), publish).await?;
        Ok(Some(shaper))
    }

    /// Applies the config file again, or keeps the running one when the new one
    /// is invalid.
    async fn reload(
        &mut self,
        scheduler: Scheduler,
        compression: &mut Compression,
        shared: &Arc<Shared>,
        agent: &mut AgentMetrics,
    ) -> Scheduler {
        let mut new = match config::load(self.path.as_deref()) {
            Ok(new) => new,
            Err(error) => {
                agent.reload_failures += 1;
                error!(%error, "config reload refused; keeping the running config");
                return scheduler;
            }
        };
        if let Some(listen) = self.listen_override {
            new.agent.listen = listen;
        }
        if new.agent != self.config.agent || new.http != self.config.http {
            warn!("changes to [agent] and [http] take effect at the next restart");
        }
        // Restarting the proxy would cut every transfer in flight.
        if new.shaping != self.config.shaping {
            warn!("changes to [shaping] take effect at the next restart");
        }
        scheduler.stop().await;
        let enabled: Vec<&str> = ALL
            .iter()
            .filter(|spec| spec.plan(&new.collectors).enabled)
            .map(|spec| spec.name)
            .collect();
        // Only collectors that are now disabled go; the agent's own sources stay.
        shared
            .store
            .retain(|source| enabled.contains(&source) || !ALL.iter().any(|spec| spec.name == source));
        self.config.collectors = new.collectors;
        compression.reconfigure(&new.compression, shared).await;
        self.config.compression = new.compression;
        agent.reloads += 1;
        info!(config = %cli::describe(self.path.as_deref()), "config reloaded");
        Scheduler::start(ALL, &self.context(shared), shared)
    }
}
