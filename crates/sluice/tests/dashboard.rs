//! The dashboard at `/`, in a real browser: Debian's headless Chromium (`/usr/bin/chromium`,
//! installed by `scripts/test.sh`) driven over the DevTools protocol with a small client on
//! tokio-tungstenite (no browser-automation crate). The browser opens `/#key=READ_KEY` on the app
//! (real Redis and PostgreSQL, a warehouse worker in-process), events are ingested through the
//! API, and the test waits until the page shows them; an event named like an HTML tag must show
//! as text, and so must an alert's subject. A screenshot goes to `test-artifacts/dashboard.png`.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_worker::ConsumerConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use common::TestApp;

const CHROMIUM: &str = "/usr/bin/chromium";
const DEADLINE: Duration = Duration::from_secs(30);
const XSS_NAME: &str = "<img src=x onerror=alert(1)>";
const SCRIPT_SUBJECT: &str = "<script>alert(2)</script>";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium of this test (killed on drop) and a DevTools connection to its page.
struct Browser {
    _child: Child,
    _profile: tempfile::TempDir,
    page: Ws,
    next_id: u64,
    /// Page events worth failing on: JS exceptions, dialogs, CSP violations.
    problems: Vec<String>,
}

impl Browser {
    async fn launch() -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is required (Debian package `chromium`; scripts/test.sh installs it)"
        );
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1200",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        // Chromium prints the browser's DevTools endpoint on stderr.
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let endpoint = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await.expect("chromium stderr") {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium exited without a DevTools endpoint");
        })
        .await
        .expect("chromium started within the deadline");
        // Keep draining stderr so chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let host = endpoint
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .expect("ws://host:port/…")
            .to_owned();
        let started = Instant::now();
        let page_ws = loop {
            let targets: Value = reqwest::get(format!("http://{host}/json/list"))
                .await
                .expect("/json/list")
                .json()
                .await
                .expect("targets JSON");
            if let Some(url) = targets.as_array().and_then(|ts| {
                ts.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            }) {
                break url.to_owned();
            }
            assert!(started.elapsed() < DEADLINE, "no page target: {targets}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (page, _) = tokio_tungstenite::connect_async(page_ws)
            .await
            .expect("DevTools page connection");
        let mut browser = Browser {
            _child: child,
            _profile: profile,
            page,
            next_id: 0,
            problems: Vec::new(),
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({})).await;
        }
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 1280, "height": 1200, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        browser
    }

    /// Send one DevTools command and wait for its answer, noting problem events meanwhile.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.page
            .send(Message::Text(msg.into()))
            .await
            .expect("send DevTools command");
        let started = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(started.elapsed());
            let frame = tokio::time::timeout(left, self.page.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {DEADLINE:?}"))
                .expect("DevTools connection open")
                .expect("DevTools frame");
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
            self.note(&v);
        }
    }

    fn note(&mut self, event: &Value) {
        let p = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => self
                .problems
                .push(format!("JS exception: {}", p["exceptionDetails"])),
            Some("Page.javascriptDialogOpening") => self
                .problems
                .push(format!("a dialog opened (script injection?): {p}")),
            Some("Log.entryAdded")
                if p["entry"]["source"] == "security" || p["entry"]["level"] == "error" =>
            {
                let text = p["entry"]["text"].as_str().unwrap_or_default();
                // A query route the server may not have yet is handled by the page.
                if !text.contains("404") {
                    self.problems.push(format!("console: {}", p["entry"]));
                }
            }
            Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                self.problems.push(format!("console.error: {}", p["args"]))
            }
            _ => {}
        }
    }

    /// Evaluate an expression in the page: its JSON value, or the exception it threw.
    async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .await
            .unwrap_or_else(|e| panic!("evaluating {expression}: {e}"))
    }

    async fn text(&mut self, id: &str) -> String {
        let v = self
            .eval(&format!(
                "(document.getElementById({id:?}) || {{}}).textContent || ''"
            ))
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Wait until `expression` is true in the page.
    async fn wait_for(&mut self, what: &str, expression: &str) {
        let started = Instant::now();
        loop {
            // Before the page has loaded, the expression may throw: not yet.
            if self.try_eval(expression).await == Ok(Value::Bool(true)) {
                return;
            }
            if started.elapsed() > DEADLINE {
                let body = self.eval("document.body.innerText").await;
                panic!("page never showed {what} ({expression}); page text:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&mut self, path: &std::path::Path) {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("artifact dir");
        std::fs::write(path, png).expect("write screenshot");
    }
}

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../test-artifacts")
        .join(name)
}

fn track(name: &str, user: usize) -> Value {
    json!({"type": "track", "event": name, "userId": format!("user-{user}")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium_shows_live_numbers_and_escapes_names() {
    let app = TestApp::spawn().await;
    // A warehouse worker, so the query panels (top events, active users) have data too.
    let mut config = ConsumerConfig::new("dashboard-worker");
    config.max_wait = Duration::from_millis(20);
    let (stop, worker) = common::spawn_warehouse_worker(app.log.clone(), app.store.clone(), config);

    let mut b = Browser::launch().await;
    let url = format!("{}/#key={}", app.base, app.read_key);
    b.call("Page.navigate", json!({ "url": url })).await;
    b.wait_for(
        "the live connection",
        "document.getElementById('status').textContent === 'live'",
    )
    .await;
    b.wait_for(
        "a first live second",
        "/^[0-9,]+$/.test(document.getElementById('total-5m').textContent)",
    )
    .await;
    assert_eq!(b.text("total-5m").await, "0");
    // The key left the address bar and lives in local storage.
    assert_eq!(b.eval("location.hash").await, json!(""));
    assert_eq!(
        b.eval("localStorage.getItem('sluice.readKey')").await,
        json!(app.read_key)
    );

    // Traffic over a few seconds (a shape for the chart), one event named like an HTML tag.
    let mut expected = 0u64;
    for round in 0..4usize {
        let mut events: Vec<Value> = (0..(10 + round * 7))
            .map(|i| track("Signed Up", i))
            .collect();
        events.extend((0..(3 + round * 2)).map(|i| track("Checkout", i)));
        events.extend((0..2).map(|i| track("Page Viewed", i + round)));
        if round == 2 {
            events.push(track(XSS_NAME, 99));
        }
        expected += events.len() as u64;
        let (status, body) = app
            .post_json("/v1/batch", &json!({ "batch": events }))
            .await;
        assert_eq!(status, 200, "{body}");
        // Spread the rounds over seconds, for the chart; not a synchronisation.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    b.wait_for(
        &format!("{expected} events in the last 5 minutes"),
        &format!("document.getElementById('total-5m').textContent === '{expected}'"),
    )
    .await;
    b.wait_for(
        "the per-event table with the HTML-like name as text",
        &format!(
            "[...document.querySelectorAll('#by-name td.name')].some(td => td.textContent === {XSS_NAME:?})"
        ),
    )
    .await;
    assert_eq!(
        b.eval("document.querySelectorAll('img').length").await,
        json!(0),
        "an event name must never become an element"
    );
    assert_eq!(
        b.eval("[...document.querySelectorAll('#by-name tr')].map(tr => tr.cells[0].textContent).sort()")
            .await,
        json!([XSS_NAME, "Checkout", "Page Viewed", "Signed Up"]),
    );
    let rows = b
        .eval(
            "Object.fromEntries([...document.querySelectorAll('#by-name tr')]\
             .map(tr => [tr.cells[0].textContent, tr.cells[2].textContent]))",
        )
        .await;
    assert_eq!(rows["Signed Up"], json!("82"), "{rows}");
    assert_eq!(rows["Checkout"], json!("24"), "{rows}");
    assert_eq!(rows[XSS_NAME], json!("1"), "{rows}");
    assert!(b.text("peak").await.parse::<u64>().unwrap_or(0) > 0);

    // An alert (the fraud processor's hook) whose subject is attacker-controlled: shown as text.
    let now = chrono::Utc::now();
    app.live.push_alert(sluice_core::warehouse::Alert {
        source: app.source.clone(),
        rule: "user_rate".to_owned(),
        subject: SCRIPT_SUBJECT.to_owned(),
        window_start: now - chrono::Duration::seconds(60),
        window_end: now,
        count: 312,
        first_event_id: "e-1".to_owned(),
        last_event_id: "e-312".to_owned(),
        created_at: now,
        details: json!({}),
    });
    b.wait_for(
        "the alert with its subject as text",
        &format!(
            "[...document.querySelectorAll('#alerts td')].some(td => td.textContent === {SCRIPT_SUBJECT:?})"
        ),
    )
    .await;
    assert_eq!(
        b.eval("document.scripts.length").await,
        json!(1),
        "only the dashboard's own script element"
    );

    // Query panels: once the worker committed, a refresh shows the top events (or, on a server
    // without the query API, a readable note rather than a broken page).
    let started = Instant::now();
    loop {
        b.eval("document.getElementById('refresh').click()").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let top_rows = b
            .eval("document.querySelectorAll('#top tr').length")
            .await
            .as_u64()
            .unwrap_or(0);
        let note = b.text("top-note").await;
        if top_rows >= 4 || note.contains("not available") {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "top events never shown; note: {note:?}"
        );
    }
    assert_eq!(
        b.eval("document.querySelectorAll('img').length").await,
        json!(0)
    );

    let shot = artifact("dashboard.png");
    b.screenshot(&shot).await;
    let size = std::fs::metadata(&shot).expect("screenshot written").len();
    assert!(size > 10_000, "screenshot suspiciously small: {size} bytes");

    // Drain pending events, then no exception, dialog or CSP violation may have happened.
    b.eval("1").await;
    assert!(b.problems.is_empty(), "page problems: {:#?}", b.problems);

    let _ = stop.send(());
    let _ = worker.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_files_are_embedded_with_strict_headers() {
    let app = TestApp::spawn().await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
    ] {
        let r = app.send(app.http.get(app.url(path))).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "connect-src 'self' ws: wss:",
            "object-src 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: CSP {csp:?} lacks {directive}"
            );
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    let index = app.send(app.http.get(app.url("/"))).await.text;
    assert!(
        !index.contains("http://") && !index.contains("https://"),
        "no third-party URL in the page"
    );
    assert!(
        !index.contains("<script>"),
        "no inline script (the CSP would refuse it)"
    );
    let js = app.send(app.http.get(app.url("/assets/app.js"))).await.text;
    assert!(!js.contains("innerHTML") && !js.contains("insertAdjacentHTML"));
}
