//! `sluice migrate` and `sluice keys create|list|revoke`.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::sync::Arc;

use sluice_core::keys::KeyKind;
use sluice_core::warehouse::Warehouse;

use crate::backends::{open_store, open_store_with, StoreUrlArgs};

#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub store: StoreUrlArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; the key itself is printed once, alone on the last line of stdout.
    Create {
        /// The source the key belongs to (events it writes are tagged with it).
        #[arg(long, env = "SLUICE_SOURCE")]
        source: String,
        /// write (ingest only) or read (query, live, dashboard).
        #[arg(long, value_parser = parse_kind)]
        kind: KeyKind,
        #[command(flatten)]
        store: StoreUrlArgs,
    },
    /// List keys (never the keys themselves: their first characters).
    List {
        #[command(flatten)]
        store: StoreUrlArgs,
    },
    /// Revoke a key by id or by the key itself. The API stops accepting it within 10 s.
    Revoke {
        /// Key id (from `keys list`) or the key.
        key: String,
        #[command(flatten)]
        store: StoreUrlArgs,
    },
}

fn parse_kind(s: &str) -> Result<KeyKind, String> {
    KeyKind::parse(s).ok_or_else(|| format!("unknown key kind {s:?}: use write or read"))
}

/// Keys live in the warehouse: the embedded one in `--data-dir` unless `--store` names another.
/// It is opened shared, so keys can be managed while `sluice serve` runs on the same directory
/// (the API picks changes up within 10 s).
async fn open_keys_store(mut store: StoreUrlArgs) -> anyhow::Result<Arc<dyn Warehouse>> {
    store.default_to_embedded(None);
    Ok(open_store_with(&store, false).await?.into_warehouse())
}

pub async fn migrate(args: StoreArgs) -> anyhow::Result<()> {
    open_store(&args.store).await?;
    println!("migrations applied");
    Ok(())
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create {
            source,
            kind,
            store,
        } => {
            if source.trim().is_empty() {
                anyhow::bail!("--source must not be empty");
            }
            let store = open_keys_store(store).await?;
            let (key, record) = store
                .create_key(&source, kind)
                .await
                .context("creating the key")?;
            println!(
                "created {} key {} for source {:?}; it is shown only now:",
                kind.as_str(),
                record.id,
                record.source
            );
            println!("{key}");
        }
        KeysCommand::List { store } => {
            let store = open_keys_store(store).await?;
            let keys = store.list_keys().await.context("listing keys")?;
            println!(
                "{:<6} {:<6} {:<20} {:<14} {:<25} revoked",
                "id", "kind", "source", "key", "created"
            );
            for k in keys {
                println!(
                    "{:<6} {:<6} {:<20} {:<14} {:<25} {}",
                    k.id,
                    k.kind.as_str(),
                    k.source,
                    k.hint,
                    k.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    k.revoked_at
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        KeysCommand::Revoke { key, store } => {
            let store = open_keys_store(store).await?;
            let record = store.revoke_key(&key).await.context("revoking the key")?;
            println!(
                "revoked {} key {} ({}) of source {:?}",
                record.kind.as_str(),
                record.id,
                record.hint,
                record.source
            );
        }
    }
    Ok(())
}
