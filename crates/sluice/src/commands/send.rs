//! `sluice send`: one test event, to check a deployment end to end.

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use crate::commands::bench::{http_post, HttpTarget};

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Base URL of the API.
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Write key.
    #[arg(long, env = "SLUICE_WRITE_KEY")]
    pub write_key: String,
    /// Event name.
    #[arg(long, default_value = "sluice test event")]
    pub event: String,
    /// User id.
    #[arg(long, default_value = "sluice-cli")]
    pub user_id: String,
    /// Properties as a JSON object.
    #[arg(long, default_value = "{}")]
    pub properties: String,
}

pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let properties: serde_json::Value =
        serde_json::from_str(&args.properties).context("--properties is not valid JSON")?;
    let body = json!({
        "type": "track",
        "event": args.event,
        "userId": args.user_id,
        "properties": properties,
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "sentAt": chrono::Utc::now().to_rfc3339(),
    });
    let target = HttpTarget::parse(&args.url)?;
    let (status, text) = http_post(
        &target,
        "/v1/track",
        &args.write_key,
        serde_json::to_vec(&body)?,
    )
    .await?;
    println!("{status} {text}");
    if !status.is_success() {
        anyhow::bail!("the API answered {status}");
    }
    Ok(())
}
