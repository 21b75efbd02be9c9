//! The `sluice` binary: parses the command line and runs one subcommand of the `sluice` library.

use std::process::ExitCode;

use sluice::commands;

// JSON parsing and building allocate many small objects per event, and batches of thousands
// of events come and go beside long-lived windows and memtables. jemalloc, measured against
// mimalloc 2.x (which had replaced the system allocator, 15–30 % slower) in `sluice serve` at
// 50,000 events/s: ~8 % less CPU per event and a lower RSS (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// It is also `malloc` for the C code linked in (SQLite, zstd): one allocator returns every
// library's freed pages on one schedule (with glibc's arenas beside it, RSS once the load stopped
// was ~25 MB higher at 50,000 events/s). Its settings (freed pages returned after 0.5 s by a
// background thread, one arena) are compiled in from `.cargo/config.toml`; `MALLOC_CONF`
// in the environment overrides them.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "High-throughput analytics event pipeline",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ingest API (and the warehouse worker) in one process.
    Serve(commands::serve::ServeArgs),
    /// Run the ingest API alone (scale out: any number against one log and one store).
    Api(commands::serve::ApiArgs),
    /// Run one processor (warehouse) alone, for scaling out.
    Worker(commands::worker::WorkerArgs),
    /// Apply the warehouse migrations and exit.
    Migrate(commands::keys::StoreArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(commands::keys::KeysCommand),
    /// Send one test event and print the response.
    Send(commands::send::SendArgs),
    /// Load generator against a running API; prints a JSON summary.
    Bench(commands::bench::BenchArgs),
}

/// What is logged unless `SLUICE_LOG` says otherwise: sluice's own `info`, and only warnings
/// and errors from the clients and storage engines below it. fjall and lsm-tree log routine
/// maintenance at `info` (a journal rotation, a trim's table drop): in the embedded `serve` at
/// 50,000 events/s that was ~3 lines a second, burying sluice's own messages.
const DEFAULT_LOG_FILTER: &str = "info,tokio_postgres=warn,fjall=warn,lsm_tree=warn";

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// No transparent huge pages for this process: the allocator's arenas would otherwise hold
/// 2 MiB pages of which little is in use (~100 MB of `serve`'s RSS under load), memory paid for
/// nothing by a service with an RSS budget.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "could not disable transparent huge pages");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    disable_transparent_huge_pages();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => commands::serve::serve(args).await,
            Command::Api(args) => commands::serve::api(args).await,
            Command::Worker(args) => commands::worker::run(args).await,
            Command::Migrate(args) => commands::keys::migrate(args).await,
            Command::Keys(cmd) => commands::keys::run(cmd).await,
            Command::Send(args) => commands::send::run(args).await,
            Command::Bench(args) => commands::bench::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// The default filter keeps sluice's `info` and the storage engines' warnings, and drops
    /// their routine `info`.
    #[test]
    fn the_default_log_filter_keeps_sluice_and_quiets_the_storage_engines() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "sluice_stream::embedded", "log open");
            tracing::info!(target: "lsm_tree::tree", "Starting drop_range compaction");
            tracing::info!(target: "fjall::worker_pool", "Rotating");
            tracing::warn!(target: "fjall::worker_pool", "write stall");
        });
        let text = String::from_utf8(lines.0.lock().expect("lock").clone()).expect("utf-8");
        assert!(text.contains("log open"), "{text}");
        assert!(text.contains("write stall"), "{text}");
        assert!(!text.contains("drop_range"), "{text}");
        assert!(!text.contains("Rotating"), "{text}");
    }
}
