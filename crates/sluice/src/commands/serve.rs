//! `sluice api` (the ingest API alone) and `sluice serve` (API and processors in one process).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use sluice_core::Limits;
use sluice_server::{AppState, KeyCache, ServerConfig};
use tokio::net::TcpListener;

use sluice_core::keys::KeyKind;
use sluice_core::log::EventLog;
use sluice_core::warehouse::Warehouse;
use sluice_worker::fraud::AlertHook;
use sluice_worker::warehouse;
use sluice_worker::{LiveConfig, LiveHub};

use crate::backends::{open_log, open_store, LogArgs, StoreUrlArgs};
use crate::commands::worker::{fraud_consumer, run_fraud, run_warehouse, ConsumerArgs, FraudArgs};
use crate::shutdown::{self, Shutdown};

/// How often the API reloads keys: new and revoked keys take effect within this.
const KEY_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Address to listen on.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub store: StoreUrlArgs,
    /// Origins allowed by CORS (comma-separated; default any).
    #[arg(long, env = "SLUICE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Take the client address from X-Forwarded-For (only behind a trusted proxy).
    #[arg(long, env = "SLUICE_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Largest request body after decompression, bytes.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Largest event, bytes.
    #[arg(long, env = "SLUICE_MAX_EVENT_BYTES", default_value_t = Limits::default().max_event_bytes)]
    pub max_event_bytes: usize,
    /// Most events per request.
    #[arg(long, env = "SLUICE_MAX_BATCH_EVENTS", default_value_t = Limits::default().max_batch_events)]
    pub max_batch_events: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub fraud: FraudArgs,
    /// Do not run the fraud worker in this process.
    #[arg(long, env = "SLUICE_NO_FRAUD")]
    pub no_fraud: bool,
}

impl ApiArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_event_bytes: self.max_event_bytes,
            max_batch_events: self.max_batch_events,
            ..Limits::default()
        }
    }
}

/// Run the API until SIGINT/SIGTERM.
pub async fn api(args: ApiArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signals();
    let store = open_store(&args.store).await?.into_warehouse();
    let log = open_log(&args.log, &[warehouse::GROUP]).await?;
    // Tails the log for `/v1/live` and the dashboard; stops when the last handle is dropped.
    let live = LiveHub::spawn(log.clone(), LiveConfig::default());
    run_api(&args, log, store, shutdown, None, live).await
}

/// Keys created on the first start of `sluice serve`.
struct FirstKeys {
    source: String,
    write: String,
    read: String,
}

/// On a store with no key at all, create a write and a read key for source `default`.
async fn create_first_keys(store: &dyn Warehouse) -> anyhow::Result<Option<FirstKeys>> {
    if !store
        .list_keys()
        .await
        .context("listing API keys")?
        .is_empty()
    {
        return Ok(None);
    }
    let source = "default".to_string();
    let (write, _) = store
        .create_key(&source, KeyKind::Write)
        .await
        .context("creating the first write key")?;
    let (read, _) = store
        .create_key(&source, KeyKind::Read)
        .await
        .context("creating the first read key")?;
    Ok(Some(FirstKeys {
        source,
        write,
        read,
    }))
}

fn print_first_keys(keys: &FirstKeys, addr: std::net::SocketAddr, keys_flag: &str) {
    println!();
    println!(
        "First start: created keys for source {:?}. They are shown only now; `sluice keys list{keys_flag}` lists them.",
        keys.source
    );
    println!("  write key: {}", keys.write);
    println!("  read key:  {}", keys.read);
    println!();
    println!("  ingest:    http://{addr}/v1/track, /v1/batch, … (Segment HTTP API)");
    println!("  dashboard: http://{addr}/#key={}", keys.read);
    println!();
    println!("Send an event:");
    println!(
        "  curl -u '{}:' -H 'Content-Type: application/json' -d '{{\"userId\":\"u1\",\"event\":\"Signed Up\"}}' http://{addr}/v1/track",
        keys.write
    );
    println!();
}

async fn run_api(
    args: &ApiArgs,
    log: Arc<dyn EventLog>,
    store: Arc<dyn Warehouse>,
    shutdown: Shutdown,
    first_keys: Option<FirstKeys>,
    live: LiveHub,
) -> anyhow::Result<()> {
    let keys = Arc::new(KeyCache::default());
    keys.refresh(store.as_ref())
        .await
        .context("loading API keys")?;
    tokio::spawn(
        keys.clone()
            .refresh_loop(store.clone(), KEY_REFRESH, shutdown.clone().wait()),
    );
    tokio::spawn(crate::memory::gauges(shutdown.clone().wait()));
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, log = %redact(args.log.url()), store = %redact(args.store.url()), "sluice API listening");
    println!("sluice API listening on http://{addr}");
    // How the user names this store on the command line, for the hints below.
    let keys_flag = if args.store.is_embedded() {
        format!(" --data-dir {}", args.store.data_dir.display())
    } else {
        format!(" --store {}", redact(args.store.url()))
    };
    if let Some(first) = first_keys {
        print_first_keys(&first, addr, &keys_flag);
    } else {
        let active = store
            .list_keys()
            .await
            .context("listing API keys")?
            .into_iter()
            .filter(|k| k.revoked_at.is_none())
            .count();
        println!(
            "{active} active API keys in the warehouse (`sluice keys list{keys_flag}`); create one with `sluice keys create{keys_flag} --source NAME --kind write|read`"
        );
        println!("dashboard: http://{addr}/#key=<read key>");
    }
    let state = AppState {
        live,
        log,
        store,
        keys,
        config: Arc::new(ServerConfig {
            limits: args.limits(),
            cors_origins: args.cors_origins.clone(),
            trust_forwarded_for: args.trust_forwarded_for,
            ..ServerConfig::default()
        }),
    };
    sluice_server::serve(listener, state, shutdown.wait())
        .await
        .context("HTTP server failed")?;
    Ok(())
}

/// Run the API and the processors in one process; stop both on SIGINT/SIGTERM.
pub async fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    let api = &mut args.api;
    api.store.default_to_embedded(Some(&mut api.log));
    let shutdown = shutdown::on_signals();
    let store = open_store(&args.api.store).await?.into_warehouse();
    let log = open_log(&args.api.log, &[warehouse::GROUP]).await?;
    let embedded_store = args.api.store.is_embedded();
    let config = args.consumer.config(embedded_store)?;
    let first = create_first_keys(store.as_ref()).await?;
    let worker = tokio::spawn(run_warehouse(
        log.clone(),
        store.clone(),
        config,
        args.api.log.is_embedded(),
        shutdown.clone(),
    ));
    // An embedded log has no other writer than this process's API, so the API counts what it
    // appends instead of the aggregator reading every entry back from the log.
    let live = if args.api.log.is_embedded() {
        LiveHub::spawn_fed(log.clone(), LiveConfig::default())
    } else {
        LiveHub::spawn(log.clone(), LiveConfig::default())
    };
    // The fraud worker: its own group and position, beside the warehouse worker; its alerts are
    // pushed live to the dashboard as they commit.
    let hook: AlertHook = {
        let live = live.clone();
        Arc::new(move |alert| live.push_alert(alert))
    };
    let fraud = if args.no_fraud {
        None
    } else {
        Some(tokio::spawn(run_fraud(
            log.clone(),
            store.clone(),
            fraud_consumer(&args.consumer, embedded_store)?,
            args.fraud.config()?,
            Some(hook),
            shutdown.clone(),
        )))
    };
    let api = run_api(&args.api, log, store, shutdown.clone(), first, live).await;
    if api.is_err() {
        // The API could not start (or failed): stop the workers rather than run headless.
        shutdown.begin();
    }
    let worker = worker
        .await
        .map_err(|e| anyhow::anyhow!("warehouse worker panicked: {e}"))?;
    let fraud = match fraud {
        Some(task) => task
            .await
            .map_err(|e| anyhow::anyhow!("fraud worker panicked: {e}"))?,
        None => Ok(()),
    };
    api.and(worker).and(fraud)
}

/// A URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
