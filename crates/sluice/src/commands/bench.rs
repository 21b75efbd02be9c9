//! `sluice bench`: a load generator against a running API.
//!
//! `--concurrency` tasks each own one HTTP/1.1 keep-alive connection and send requests back to
//! back (or paced to `--rate`); every ack latency goes into an HDR histogram. Events are realistic:
//! several names, thousands of users, ~300-byte properties, unique `messageId`s
//! (`{run}-` and 16 hex digits that look random, as SDKs' UUIDs are: each new id lands anywhere
//! in a warehouse's id indexes, not next to the previous one) so a verification pass can find
//! every one of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::commands::verify;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of the API.
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Write key.
    #[arg(long, env = "SLUICE_WRITE_KEY")]
    pub write_key: String,
    /// Target events per second over all connections; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// How long to send: 30s, 2m, 500ms (a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Events per request; 1 sends single `/v1/track` calls, more sends `/v1/batch`.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Distinct users the events come from.
    #[arg(long, default_value_t = 5_000)]
    pub users: u32,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// After sending, wait until every acked event is in the warehouse and report `landed`,
    /// `missing`, `duplicates` and `freshness_ms` (ack → visible in the warehouse).
    #[arg(long, requires = "store")]
    pub verify: bool,
    /// The warehouse to verify against (read directly).
    #[arg(long = "store", env = "SLUICE_STORE_URL")]
    pub store: Option<String>,
    /// Longest wait for the warehouse to show every acked event.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub verify_timeout: Duration,
    /// Sample one request in this many for freshness.
    #[arg(long, default_value_t = 20)]
    pub sample_every: u64,
}

/// Parse `30s`, `2m`, `500ms`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 30s, 2m, 500ms"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration unit {unit:?}: use ms, s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Where the API is.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub addr: String,
    pub authority: String,
}

impl HttpTarget {
    pub fn parse(url: &str) -> anyhow::Result<HttpTarget> {
        let rest = url
            .strip_prefix("http://")
            .context("only http:// URLs are supported (put TLS in front of sluice)")?;
        let authority = rest.split('/').next().unwrap_or(rest).to_string();
        if authority.is_empty() {
            bail!("no host in {url:?}");
        }
        let addr = if authority.contains(':') {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        Ok(HttpTarget { addr, authority })
    }
}

fn basic_auth(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(target: &HttpTarget) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(&target.addr)
        .await
        .with_context(|| format!("cannot connect to {}", target.addr))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn post(
    sender: &mut Sender,
    target: &HttpTarget,
    path: &str,
    auth: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let req = Request::post(path)
        .header(hyper::header::HOST, &target.authority)
        .header(hyper::header::AUTHORIZATION, auth)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// One POST on a fresh connection (for `sluice send`).
pub async fn http_post(
    target: &HttpTarget,
    path: &str,
    key: &str,
    body: Vec<u8>,
) -> anyhow::Result<(StatusCode, String)> {
    let mut sender = connect(target).await?;
    let (status, body) = post(
        &mut sender,
        target,
        path,
        &basic_auth(key),
        Bytes::from(body),
    )
    .await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

const NAMES: [&str; 12] = [
    "page_view",
    "click",
    "signup",
    "login",
    "login_failed",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "search",
    "video_play",
    "share",
    "purchase",
];

/// Builds realistic event bodies.
struct EventGen {
    run: String,
    task: usize,
    seq: u64,
    users: u32,
    rng: SmallRng,
    properties: Arc<Vec<String>>,
}

fn property_pool(n: usize) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(42);
    (0..n)
        .map(|i| {
            let currency = ["EUR", "USD", "GBP"][i % 3];
            let category = ["shoes", "books", "garden", "toys", "audio"][i % 5];
            let plan = ["free", "pro", "team"][i % 3];
            json!({
                "path": format!("/products/{}/details", rng.random_range(1..100_000)),
                "referrer": format!("https://www.example.com/search?q=item-{}&page={}", rng.random_range(0..10_000), rng.random_range(1..20)),
                "title": "A product page with a reasonably long title, as real pages have",
                "price": (rng.random_range(100..100_000) as f64) / 100.0,
                "currency": currency,
                "sku": format!("SKU-{:08}", rng.random_range(0..100_000_000u32)),
                "category": category,
                "plan": plan,
                "experiment": format!("exp-{}", i % 7),
            })
            .to_string()
        })
        .collect()
}

impl EventGen {
    fn event(&mut self, out: &mut String) {
        use std::fmt::Write as _;
        self.seq += 1;
        let user = self.rng.random_range(0..self.users.max(1));
        let name = NAMES[self.rng.random_range(0..NAMES.len())];
        let props = &self.properties[self.rng.random_range(0..self.properties.len())];
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let _ = write!(
            out,
            r#"{{"type":"track","messageId":"{}-{:016x}","userId":"user-{}","event":"{}","properties":{},"timestamp":"{}","context":{{"library":{{"name":"sluice-bench","version":"1"}}}}}}"#,
            self.run,
            self.id_bits(self.seq),
            user,
            name,
            props,
            now
        );
    }

    /// The `messageId` of this generator's event number `seq`.
    fn event_id(&self, seq: u64) -> String {
        format!("{}-{:016x}", self.run, self.id_bits(seq))
    }

    /// `(task, seq)` scrambled by a bijection of `u64` (splitmix64's finaliser): unique per
    /// event while `seq < 2^40`, spread like random ids, and recomputable for the samples.
    fn id_bits(&self, seq: u64) -> u64 {
        let mut z = ((self.task as u64) << 40) ^ seq;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn body(&mut self, batch_size: usize) -> Bytes {
        let mut out = String::with_capacity(600 * batch_size + 64);
        if batch_size <= 1 {
            self.event(&mut out);
        } else {
            out.push_str(r#"{"batch":["#);
            for i in 0..batch_size {
                if i > 0 {
                    out.push(',');
                }
                self.event(&mut out);
            }
            out.push_str(r#"],"sentAt":""#);
            out.push_str(&chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            out.push_str(r#""}"#);
        }
        Bytes::from(out)
    }
}

/// What one connection task measured.
struct TaskResult {
    histogram: Histogram<u64>,
    sent_events: u64,
    acked_events: u64,
    requests: u64,
    errors: BTreeMap<String, u64>,
    /// Event ids of requests that were not acknowledged (they may still have landed).
    unacked: Vec<String>,
}

struct Shared {
    acked: AtomicU64,
    sent: AtomicU64,
}

#[allow(clippy::too_many_arguments)]
async fn run_task(
    args: Arc<BenchArgs>,
    target: Arc<HttpTarget>,
    auth: Arc<String>,
    mut generator: EventGen,
    shared: Arc<Shared>,
    samples: Option<mpsc::Sender<verify::Sample>>,
    start: Instant,
    deadline: Instant,
) -> TaskResult {
    let mut result = TaskResult {
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
        sent_events: 0,
        acked_events: 0,
        requests: 0,
        errors: BTreeMap::new(),
        unacked: Vec::new(),
    };
    let path = if args.batch_size <= 1 {
        "/v1/track"
    } else {
        "/v1/batch"
    };
    let batch = args.batch_size.max(1) as u64;
    // Pacing: this task's share of the rate, as one request every `period`.
    let period = (args.rate > 0).then(|| {
        let per_task = args.rate as f64 / args.concurrency.max(1) as f64;
        Duration::from_secs_f64(batch as f64 / per_task)
    });
    let mut next = start;
    let mut sender: Option<Sender> = None;
    while Instant::now() < deadline {
        if let Some(period) = period {
            next += period;
            if next >= deadline {
                break;
            }
            tokio::time::sleep_until(next.into()).await;
        }
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match connect(&target).await {
                Ok(s) => sender.insert(s),
                Err(_) => {
                    *result.errors.entry("connect".into()).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let first_seq = generator.seq + 1;
        // The batch's events carry timestamps from now on (the freshness poller's lower bound).
        let generated_at = chrono::Utc::now();
        let body = generator.body(args.batch_size);
        let t0 = Instant::now();
        result.sent_events += batch;
        result.requests += 1;
        shared.sent.fetch_add(batch, Ordering::Relaxed);
        match tokio::time::timeout(args.timeout, post(s, &target, path, &auth, body)).await {
            Ok(Ok((status, _))) if status.is_success() => {
                let micros = t0.elapsed().as_micros().max(1) as u64;
                let _ = result.histogram.record(micros.min(60_000_000));
                result.acked_events += batch;
                shared.acked.fetch_add(batch, Ordering::Relaxed);
                if let Some(samples) = &samples {
                    if result.requests.is_multiple_of(args.sample_every.max(1)) {
                        // Full channel: skip the sample rather than slow the load down.
                        let _ = samples.try_send(verify::Sample {
                            id: generator.event_id(first_seq),
                            acked_at: Instant::now(),
                            generated_at,
                        });
                    }
                }
                continue;
            }
            Ok(Ok((status, _))) => {
                *result
                    .errors
                    .entry(status.as_u16().to_string())
                    .or_default() += 1;
            }
            Ok(Err(_)) => {
                *result.errors.entry("connection".into()).or_default() += 1;
                sender = None;
            }
            Err(_) => {
                *result.errors.entry("timeout".into()).or_default() += 1;
                sender = None;
            }
        }
        if args.verify {
            result
                .unacked
                .extend((first_seq..first_seq + batch).map(|seq| generator.event_id(seq)));
        }
    }
    result
}

fn ms(micros: u64) -> f64 {
    (micros as f64 / 1000.0 * 1000.0).round() / 1000.0
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.batch_size == 0 || args.batch_size > 2_500 {
        bail!("--batch-size must be between 1 and 2500");
    }
    let target = Arc::new(HttpTarget::parse(&args.url)?);
    // Fail fast with a clear message when nothing listens there.
    drop(connect(&target).await?);
    let auth = Arc::new(basic_auth(&args.write_key));
    let run_id = format!("bench-{}", &uuid::Uuid::now_v7().simple().to_string()[..12]);
    let properties = Arc::new(property_pool(256));
    let shared = Arc::new(Shared {
        acked: AtomicU64::new(0),
        sent: AtomicU64::new(0),
    });
    let verify = match (&args.verify, &args.store) {
        (true, Some(url)) => {
            let store = crate::backends::open_store_url(url).await?.into_warehouse();
            let source = verify::source_of(store.as_ref(), &args.write_key).await?;
            Some((store, source))
        }
        _ => None,
    };
    let (sample_tx, sample_rx) = mpsc::channel::<verify::Sample>(100_000);
    let (done_tx, done_rx) = watch::channel(false);
    let freshness = verify.as_ref().map(|(store, source)| {
        tokio::spawn(verify::Freshness::run(
            store.clone(),
            source.clone(),
            sample_rx,
            done_rx,
            args.verify_timeout,
        ))
    });
    let sample_tx = verify.as_ref().map(|_| sample_tx);
    let args = Arc::new(args);
    let start = Instant::now();
    let deadline = start + args.duration;

    let progress = indicatif::ProgressBar::new(args.duration.as_secs().max(1));
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len}s {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let ticker = {
        let shared = shared.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let acked = shared.acked.load(Ordering::Relaxed);
                progress.set_position(start.elapsed().as_secs());
                progress.set_message(format!("{acked} acked, {} ev/s", (acked - last) * 2));
                last = acked;
            }
        })
    };

    let mut tasks = Vec::with_capacity(args.concurrency);
    for task in 0..args.concurrency {
        let generator = EventGen {
            run: run_id.clone(),
            task,
            seq: 0,
            users: args.users,
            rng: SmallRng::seed_from_u64(task as u64 + 1),
            properties: properties.clone(),
        };
        tasks.push(tokio::spawn(run_task(
            args.clone(),
            target.clone(),
            auth.clone(),
            generator,
            shared.clone(),
            sample_tx.clone(),
            start,
            deadline,
        )));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut sent, mut acked, mut requests) = (0u64, 0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut unacked: Vec<String> = Vec::new();
    for t in tasks {
        let r = t.await.context("a load task panicked")?;
        histogram.add(&r.histogram)?;
        sent += r.sent_events;
        acked += r.acked_events;
        requests += r.requests;
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
        unacked.extend(r.unacked);
    }
    drop(sample_tx);
    let elapsed = start.elapsed().as_secs_f64();
    ticker.abort();
    progress.finish_and_clear();
    let mut summary = json!({
        "run_id": run_id,
        "url": args.url,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "target_rate": args.rate,
        "sent": sent,
        "acked": acked,
        "requests": requests,
        "errors": errors,
        "duration_s": (elapsed * 1000.0).round() / 1000.0,
        "events_per_sec": (acked as f64 / elapsed).round(),
        "requests_per_sec": ((requests as f64 - errors.values().sum::<u64>() as f64) / elapsed).round(),
        "latency_ms": {
            "p50": ms(histogram.value_at_quantile(0.50)),
            "p90": ms(histogram.value_at_quantile(0.90)),
            "p99": ms(histogram.value_at_quantile(0.99)),
            "max": ms(histogram.max()),
        },
    });
    if let (Some((store, source)), Some(freshness)) = (&verify, freshness) {
        let _ = done_tx.send(true);
        let waiting = Instant::now();
        // The sampled events first: the poller's look-ups are narrow, where each count of the
        // run's events reads them all (a scan, on an embedded warehouse opened beside serve)
        // and would take CPU from the pipeline still catching up.
        let freshness = freshness.await.context("the freshness poller panicked")?;
        // One deadline for both waits (the count runs at least once).
        let settled = verify::settle(
            store.as_ref(),
            source,
            &run_id,
            acked,
            &unacked,
            args.verify_timeout.saturating_sub(waiting.elapsed()),
        )
        .await?;
        if let Some(obj) = summary.as_object_mut() {
            obj.insert("landed".into(), json!(settled.landed));
            obj.insert("missing".into(), json!(settled.missing));
            obj.insert("duplicates".into(), json!(settled.duplicates));
            obj.insert("unacked_landed".into(), json!(settled.unacked_landed));
            obj.insert(
                "settle_wait_s".into(),
                json!((waiting.elapsed().as_secs_f64() * 1000.0).round() / 1000.0),
            );
            obj.insert("freshness_ms".into(), freshness.to_json());
        }
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("7 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn generated_batches_are_valid_segment_bodies() {
        let mut g = EventGen {
            run: "r".into(),
            task: 3,
            seq: 0,
            users: 10,
            rng: SmallRng::seed_from_u64(1),
            properties: Arc::new(property_pool(4)),
        };
        let body = g.body(5);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        let batch = v["batch"].as_array().expect("batch");
        assert_eq!(batch.len(), 5);
        assert_eq!(batch[4]["messageId"], g.event_id(5).as_str());
        let single: serde_json::Value = serde_json::from_slice(&g.body(1)).expect("valid JSON");
        assert_eq!(single["messageId"], g.event_id(6).as_str());
        let other = EventGen {
            run: "r".into(),
            task: 4,
            seq: 0,
            users: 10,
            rng: SmallRng::seed_from_u64(1),
            properties: Arc::clone(&g.properties),
        };
        let ids: std::collections::HashSet<String> = (1..=10_000)
            .flat_map(|seq| [g.event_id(seq), other.event_id(seq)])
            .collect();
        assert_eq!(
            ids.len(),
            20_000,
            "ids are unique across tasks and sequence numbers"
        );
        assert!(ids
            .iter()
            .all(|id| id.starts_with("r-") && id.len() == 2 + 16));
        // Like random UUIDs, consecutive ids are in increasing order about half the time.
        let rising = (1..10_000)
            .filter(|&seq| g.event_id(seq) < g.event_id(seq + 1))
            .count();
        assert!(
            (4_000..6_000).contains(&rising),
            "{rising} of 9,999 pairs rise"
        );
        let props = single["properties"].to_string();
        assert!(
            props.len() > 250 && props.len() < 450,
            "properties are {} bytes",
            props.len()
        );
    }
}
