//! First-run convenience: create the warehouse database when it does not exist yet, so
//! `sluice serve` works on a fresh PostgreSQL with one command.

use std::time::Duration;

use sluice_core::warehouse::StoreError;
use tokio_postgres::NoTls;

/// Create the database named in `url` if it is missing, connecting to the server's `postgres`
/// maintenance database with the same credentials. Returns whether it was created.
pub async fn create_database_if_missing(url: &str) -> Result<bool, StoreError> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Invalid(format!("bad PostgreSQL URL: {e}")))?;
    let Some(name) = config.get_dbname().map(str::to_string) else {
        return Ok(false);
    };
    if name == "postgres" {
        return Ok(false);
    }
    let mut admin = config.clone();
    admin
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2));
    let (client, connection) = admin.connect(NoTls).await.map_err(|e| {
        StoreError::Unavailable(format!("connecting to the postgres database: {e}"))
    })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|e| StoreError::Other(format!("looking up database {name}: {e}")))?
        .is_some();
    if exists {
        return Ok(false);
    }
    // CREATE DATABASE takes no parameters; quote the identifier.
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => Ok(true),
        // Another process created it meanwhile.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
            Ok(false)
        }
        Err(e) => Err(StoreError::Other(format!("creating database {name}: {e}"))),
    }
}
