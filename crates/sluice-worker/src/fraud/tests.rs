//! The window logic on synthetic events: pure, deterministic (seeded randomness, no clock).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};
use sluice_core::warehouse::Alert;
use sluice_core::{Event, EventKind, JsonObject};

use super::config::FraudConfig;
use super::detector::{Detector, FraudStats, Signal};

const SOURCE: &str = "src";

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .expect("valid time")
}

/// A track event at `base + ms`, received at that same time.
fn ev(id: &str, user: &str, name: &str, ip: Option<&str>, ms: i64) -> Event {
    let t = base() + chrono::Duration::milliseconds(ms);
    let mut context = Map::new();
    if let Some(ip) = ip {
        context.insert("ip".into(), Value::String(ip.into()));
    }
    Event {
        event_id: id.into(),
        source: SOURCE.into(),
        kind: EventKind::Track,
        name: Some(name.into()),
        user_id: Some(user.into()),
        anonymous_id: None,
        group_id: None,
        previous_id: None,
        timestamp: t,
        original_timestamp: Some(t),
        sent_at: Some(t),
        received_at: t,
        properties: JsonObject::empty(),
        traits: JsonObject::empty(),
        context: context.into(),
        integrations: JsonObject::empty(),
    }
}

fn detector(config: FraudConfig) -> Detector {
    Detector::new(config, Arc::new(FraudStats::default()))
}

fn run(d: &mut Detector, events: &[Event]) -> Vec<Alert> {
    let mut out = Vec::new();
    for e in events {
        d.observe(&e.into(), base(), &mut out);
        d.maintain();
    }
    out
}

fn at(ms: i64) -> DateTime<Utc> {
    base() + chrono::Duration::milliseconds(ms)
}

fn only(config: impl FnOnce(&mut FraudConfig)) -> FraudConfig {
    let mut c = FraudConfig::default();
    c.user_rate.enabled = false;
    c.ip_many_users.enabled = false;
    c.name_burst.enabled = false;
    c.clock_skew.enabled = false;
    config(&mut c);
    c
}

#[test]
fn user_rate_fires_once_per_burst_with_the_burst_window() {
    let mut d = detector(only(|c| c.user_rate.enabled = true));
    // 150 events 20 ms apart (3 s), then a second burst 30 s later.
    let mut events: Vec<Event> = (0..150)
        .map(|i| ev(&format!("a{i}"), "bot", "view", None, i * 20))
        .collect();
    events.extend((0..150).map(|i| ev(&format!("b{i}"), "bot", "view", None, 30_000 + i * 20)));
    let alerts = run(&mut d, &events);
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        (a.rule.as_str(), a.subject.as_str(), a.count),
        ("user_rate", "bot", 101)
    );
    assert_eq!((a.window_start, a.window_end), (at(0), at(10_000)));
    assert_eq!(
        (a.first_event_id.as_str(), a.last_event_id.as_str()),
        ("a0", "a100")
    );
    assert_eq!(a.details["threshold"], 100);
    let b = &alerts[1];
    assert_eq!((b.window_start, b.count), (at(30_000), 101));
    assert_eq!(b.first_event_id, "b0");
}

#[test]
fn user_rate_at_the_threshold_stays_quiet() {
    let mut d = detector(only(|c| c.user_rate.enabled = true));
    // Exactly 100 per 10 s, for a minute: never more than 100 in any window.
    let events: Vec<Event> = (0..600)
        .map(|i| ev(&format!("e{i}"), "busy", "view", None, i * 100))
        .collect();
    assert!(run(&mut d, &events).is_empty());
}

#[test]
fn a_sustained_attack_raises_one_alert_per_window() {
    let mut d = detector(only(|c| c.user_rate.enabled = true));
    // 50 events/s for 60 s: 500 per window, one alert per 10 s.
    let events: Vec<Event> = (0..3_000)
        .map(|i| ev(&format!("e{i}"), "bot", "view", None, i * 20))
        .collect();
    let alerts = run(&mut d, &events);
    let starts: Vec<_> = alerts.iter().map(|a| a.window_start).collect();
    assert_eq!(
        starts,
        (0..6).map(|k| at(k * 10_000)).collect::<Vec<_>>(),
        "windows follow one another"
    );
}

#[test]
fn late_events_do_not_reopen_a_closed_window() {
    let stats = Arc::new(FraudStats::default());
    let mut d = Detector::new(only(|c| c.user_rate.enabled = true), stats.clone());
    let mut events: Vec<Event> = vec![ev("new", "u", "view", None, 60_000)];
    events.extend((0..200).map(|i| ev(&format!("old{i}"), "u", "view", None, i)));
    assert!(run(&mut d, &events).is_empty());
    assert_eq!(stats.late.load(Ordering::Relaxed), 200);
}

#[test]
fn ip_many_users_counts_distinct_users() {
    let mut d = detector(only(|c| c.ip_many_users.enabled = true));
    let ip = Some("203.0.113.7");
    // 20 users, each many times: quiet. The 21st distinct user fires.
    let mut events = Vec::new();
    for round in 0..5 {
        for u in 0..20 {
            events.push(ev(
                &format!("r{round}u{u}"),
                &format!("user-{u}"),
                "login",
                ip,
                round * 1_000 + u * 10,
            ));
        }
    }
    assert!(run(&mut d, &events).is_empty());
    let alerts = run(&mut d, &[ev("last", "user-20", "login", ip, 6_000)]);
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!(
        (a.rule.as_str(), a.subject.as_str(), a.count),
        ("ip_many_users", "203.0.113.7", 21)
    );
    // The oldest user still in the window is user-0, last seen in round 4.
    assert_eq!(a.window_start, at(4_000));
    assert_eq!(a.window_end, at(64_000));
    assert_eq!(
        (a.first_event_id.as_str(), a.last_event_id.as_str()),
        ("r4u0", "last")
    );
    // Private addresses are not watched by default.
    let mut d = detector(only(|c| c.ip_many_users.enabled = true));
    let lan: Vec<Event> = (0..100)
        .map(|u| {
            ev(
                &format!("l{u}"),
                &format!("user-{u}"),
                "login",
                Some("10.0.0.1"),
                u,
            )
        })
        .collect();
    assert!(run(&mut d, &lan).is_empty());
}

#[test]
fn name_burst_per_user_and_name_and_only_listed_names() {
    let mut d = detector(only(|c| {
        c.name_burst.enabled = true;
        c.name_burst.names = vec!["login_failed".into()];
    }));
    let mut events = Vec::new();
    for i in 0..30 {
        events.push(ev(&format!("v{i}"), "u1", "view", None, i * 100));
        events.push(ev(
            &format!("f{i}"),
            "u1",
            "login_failed",
            None,
            i * 100 + 1,
        ));
    }
    let alerts = run(&mut d, &events);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        (a.rule.as_str(), a.subject.as_str(), a.count),
        ("name_burst", "u1/login_failed", 21)
    );
    assert_eq!(a.window_start, at(1));
    assert_eq!(a.details["name"], "login_failed");
    assert_eq!(a.details["user"], "u1");
    assert_eq!(a.last_event_id, "f20");
}

#[test]
fn clock_skew_checks_the_client_clock_and_the_event_time() {
    let mut d = detector(only(|c| c.clock_skew.enabled = true));
    // Client clock 2 h fast: sent_at far ahead of received_at (the corrected time is fine).
    let mut fast = ev("fast", "u1", "view", None, 0);
    fast.sent_at = Some(at(2 * 3_600_000));
    fast.original_timestamp = Some(at(2 * 3_600_000 - 1_000));
    // Event claims to be 3 days old (no sent_at: timestamp is the client's).
    let mut old = ev("old", "u2", "view", None, 0);
    old.sent_at = None;
    old.timestamp = at(-3 * 86_400_000);
    old.original_timestamp = Some(old.timestamp);
    // Slightly off (5 min ahead): tolerated.
    let mut ok = ev("ok", "u3", "view", None, 0);
    ok.sent_at = Some(at(300_000));
    // u1 again within the cooldown: nothing new.
    let mut again = ev("again", "u1", "view", None, 60_000);
    again.sent_at = Some(at(2 * 3_600_000 + 60_000));
    let alerts = run(&mut d, &[fast, old, ok, again]);
    let got: Vec<(&str, &str, &str)> = alerts
        .iter()
        .map(|a| {
            (
                a.subject.as_str(),
                a.first_event_id.as_str(),
                a.details["check"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("u1", "fast", "sent_at"), ("u2", "old", "timestamp")]
    );
    assert_eq!(alerts[0].window_start, at(0));
    assert_eq!(alerts[0].window_end, at(3_600_000));
    assert_eq!(alerts[0].count, 1);
}

/// An attack mixed into normal traffic, every rule involved.
fn mixed_sequence(seed: u64) -> Vec<Event> {
    // A tiny deterministic generator (no dependency needed).
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut events = Vec::new();
    let mut t = 0i64;
    for i in 0..6_000 {
        t += next(40) as i64;
        let (user, name, ip) = match next(10) {
            0..=1 => (
                "bot-1".to_string(),
                "login_failed",
                "203.0.113.9".to_string(),
            ),
            2 => (
                format!("farm-{}", next(60)),
                "signup",
                "198.51.100.4".to_string(),
            ),
            _ => (
                format!("user-{}", next(500)),
                ["view", "click", "buy"][next(3) as usize],
                format!("192.0.2.{}", next(200)),
            ),
        };
        let mut e = ev(&format!("e{i}"), &user, name, Some(&ip), t);
        if next(500) == 0 {
            e.sent_at = Some(e.received_at + chrono::Duration::hours(3));
        }
        events.push(e);
    }
    events
}

fn keys(alerts: &[Alert]) -> BTreeSet<(String, String, DateTime<Utc>)> {
    alerts
        .iter()
        .map(|a| (a.rule.clone(), a.subject.clone(), a.window_start))
        .collect()
}

/// A restart anywhere — replay the entries before the cut, seed the cooldowns from the alerts
/// committed so far, evaluate the rest — raises exactly the alerts an uninterrupted run raises.
#[test]
fn restart_at_any_point_raises_the_same_alerts_exactly_once() {
    let events = mixed_sequence(7);
    let config = FraudConfig::default();
    let whole = run(&mut detector(config.clone()), &events);
    let whole_keys = keys(&whole);
    assert_eq!(whole_keys.len(), whole.len(), "no key twice in one run");
    let rules: BTreeSet<&str> = whole.iter().map(|a| a.rule.as_str()).collect();
    assert_eq!(
        rules,
        ["clock_skew", "ip_many_users", "name_burst", "user_rate"]
            .into_iter()
            .collect(),
        "the sequence exercises every rule"
    );
    for cut in [1, 17, 250, 999, 1_500, 2_222, 3_001, 4_444, 5_999] {
        let mut first = detector(config.clone());
        let before = run(&mut first, &events[..cut]);
        let mut second = detector(config.clone());
        for e in &events[..cut] {
            second.replay(&e.into());
        }
        second.maintain();
        for a in &before {
            second.seed(a);
        }
        let after = run(&mut second, &events[cut..]);
        let mut all = keys(&before);
        for k in keys(&after) {
            assert!(
                all.insert(k.clone()),
                "cut {cut}: {k:?} raised again after the restart"
            );
        }
        assert_eq!(
            all, whole_keys,
            "cut {cut}: not the alerts of an uninterrupted run"
        );
    }
}

/// Restarting twice (the kill -9 test's situation) is the same.
#[test]
fn two_restarts_raise_the_same_alerts() {
    let events = mixed_sequence(11);
    let config = FraudConfig::default();
    let whole = keys(&run(&mut detector(config.clone()), &events));
    let cuts = [0, 1_234, 3_456, events.len()];
    let mut committed: Vec<Alert> = Vec::new();
    for w in cuts.windows(2) {
        let mut d = detector(config.clone());
        for e in &events[..w[0]] {
            d.replay(&e.into());
        }
        for a in &committed {
            d.seed(a);
        }
        committed.extend(run(&mut d, &events[w[0]..w[1]]));
    }
    assert_eq!(keys(&committed).len(), committed.len(), "a duplicate key");
    assert_eq!(keys(&committed), whole);
}

#[test]
fn normal_traffic_raises_nothing() {
    // Like `sluice bench`: 5,000 users, 10 names, events spread over an hour, each user on its
    // own address (and every event from 127.0.0.1 in a second pass, as through a local bench).
    let names = [
        "page_view",
        "click",
        "search",
        "add_to_cart",
        "checkout",
        "signup",
        "login",
        "logout",
        "share",
        "purchase",
    ];
    let mut x = 12345u64;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let events: Vec<Event> = (0..100_000)
        .map(|i| {
            let user = next(5_000);
            let ms = (i as i64) * 36 + next(30) as i64;
            ev(
                &format!("n{i}"),
                &format!("user-{user}"),
                names[next(10) as usize],
                Some(&format!("198.51.{}.{}", user / 250, user % 250)),
                ms,
            )
        })
        .collect();
    let alerts = run(&mut detector(FraudConfig::default()), &events);
    assert!(alerts.is_empty(), "{:#?}", &alerts[..alerts.len().min(3)]);
    let local: Vec<Event> = events
        .iter()
        .cloned()
        .map(|mut e| {
            e.context
                .insert("ip".into(), Value::String("127.0.0.1".into()));
            e
        })
        .collect();
    assert!(run(&mut detector(FraudConfig::default()), &local).is_empty());
}

#[test]
fn memory_stays_within_max_subjects() {
    let stats = Arc::new(FraudStats::default());
    let config = FraudConfig {
        max_subjects: 1_000,
        ..FraudConfig::default()
    };
    let mut d = Detector::new(config, stats.clone());
    let mut out = Vec::new();
    for batch in 0..50 {
        for i in 0..200 {
            let n = batch * 200 + i;
            d.observe(
                &Signal::from(&ev(
                    &format!("e{n}"),
                    &format!("u{n}"),
                    "view",
                    Some("203.0.113.1"),
                    n,
                )),
                base(),
                &mut out,
            );
        }
        d.maintain();
        assert!(
            d.subjects() <= 1_000,
            "batch {batch}: {} subjects",
            d.subjects()
        );
    }
    assert!(stats.evicted.load(Ordering::Relaxed) > 0);
    assert_eq!(stats.subjects.load(Ordering::Relaxed), d.subjects() as u64);
}

#[test]
fn event_ids_are_held_once_per_window_and_let_go_with_it() {
    // Every path that keeps or drops an id: firing, pruning, replay's cut to N + 1, IPs'
    // latest ids, expiry and eviction; short ids in place and long ones (> 38 bytes) apart.
    for max_subjects in [1_000_000, 40] {
        let config = FraudConfig {
            max_subjects,
            ..FraudConfig::default()
        };
        let mut config = config;
        config.ip_many_users.include_private = true;
        let mut live = detector(config.clone());
        let mut replayed = detector(config);
        let mut out = Vec::new();
        let events = mixed_sequence(7);
        let last = events.len() - 1;
        for (i, mut e) in events.into_iter().enumerate() {
            if i % 3 == 0 {
                e.event_id = format!("a-long-event-id-of-more-than-38-bytes-{i}");
            }
            live.observe(&(&e).into(), base(), &mut out);
            replayed.replay(&(&e).into());
            if i % 100 == 0 {
                live.maintain();
                replayed.maintain();
            }
            if i % 20 != 0 && i != last {
                continue;
            }
            for d in [&live, &replayed] {
                if let Err(problem) = d.check_ids() {
                    panic!("after event {i} (max_subjects {max_subjects}): {problem}");
                }
            }
        }
        assert!(!out.is_empty(), "the sequence fires rules");
        assert!(live.held_ids() > 0);
        assert!(out.iter().any(|a| a.first_event_id.len() > 38));
    }
}

#[test]
fn idle_subjects_expire() {
    let stats = Arc::new(FraudStats::default());
    let mut d = Detector::new(FraudConfig::default(), stats.clone());
    let mut out = Vec::new();
    // 300,000 users once each over 3 hours of server time: only the recent ones stay.
    for n in 0..300_000i64 {
        d.observe(
            &Signal::from(&ev(
                &format!("e{n}"),
                &format!("u{n}"),
                "view",
                None,
                n * 36,
            )),
            base(),
            &mut out,
        );
        d.maintain();
    }
    assert!(stats.expired.load(Ordering::Relaxed) > 200_000);
    assert_eq!(stats.evicted.load(Ordering::Relaxed), 0);
    assert!(d.subjects() < 300_000);
}

#[test]
fn signal_decodes_what_the_rules_read_from_the_canonical_json() {
    let mut e = ev("m-1", "u-1", "login_failed", Some("203.0.113.9"), 1_500);
    e.anonymous_id = Some("anon-1".into());
    e.sent_at = Some(base() + chrono::Duration::seconds(3));
    e.properties
        .insert("nested".into(), serde_json::json!({"a": [1, {"b": "c"}]}));
    e.context
        .insert("library".into(), serde_json::json!({"name": "x"}));
    let decoded = Signal::from_json(&e.to_json()).expect("decodes");
    assert_eq!(decoded, Signal::from(&e));
    assert_eq!(decoded.user_key(), Some("u-1"));
    assert_eq!(decoded.ip(), Some("203.0.113.9"));

    // A foreign producer's non-string `context.ip` is no IP, not an undecodable entry.
    e.context.insert("ip".into(), serde_json::json!(12345));
    let decoded = Signal::from_json(&e.to_json()).expect("decodes");
    assert_eq!(decoded.ip(), None);
    assert_eq!(e.ip(), None);

    // What the warehouse would dead-letter as not an event, the fraud group does too.
    assert!(Signal::from_json(br#"{"source":"s"}"#).is_err());
    assert!(Signal::from_json(b"not json").is_err());
}
