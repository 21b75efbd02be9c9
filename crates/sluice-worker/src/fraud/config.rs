//! The fraud rules' settings: thresholds, windows, the memory bound. Deserializable from the
//! `[fraud]` table of the TOML configuration (unknown keys are errors); the binary also sets
//! every field from a flag. `FraudConfig::default()` is what runs when nothing is configured.

use std::time::Duration;

use serde::Deserialize;

/// A windowed count rule: fires when the count within `window_secs` goes above `threshold`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowRule {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Fires when the count is strictly greater than this.
    pub threshold: u32,
    /// Window length in seconds of event time.
    pub window_secs: u64,
}

impl WindowRule {
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }
}

/// `ip_many_users`: a [`WindowRule`] over distinct users per IP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRule {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub threshold: u32,
    pub window_secs: u64,
    /// Also watch loopback, private (RFC 1918, IPv6 unique-local), link-local and unspecified
    /// addresses. Off by default: such an address is a proxy or a load generator on the same
    /// network (every event of `sluice bench` on one host comes from 127.0.0.1), not a client.
    #[serde(default)]
    pub include_private: bool,
}

impl IpRule {
    /// Whether events from this `context.ip` are counted.
    pub fn watches(&self, ip: &str) -> bool {
        if self.include_private {
            return true;
        }
        match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) => {
                !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified())
            }
            Ok(std::net::IpAddr::V6(v6)) => {
                let seg = v6.segments()[0];
                let unique_local = (seg & 0xfe00) == 0xfc00;
                let link_local = (seg & 0xffc0) == 0xfe80;
                match v6.to_ipv4_mapped() {
                    Some(v4) => !(v4.is_loopback() || v4.is_private() || v4.is_link_local()),
                    None => {
                        !(v6.is_loopback() || v6.is_unspecified() || unique_local || link_local)
                    }
                }
            }
            // Not an address (a foreign producer's free text): counted as given.
            Err(_) => true,
        }
    }
}

/// `name_burst`: a [`WindowRule`] per (user, event name), optionally for some names only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameBurstRule {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub threshold: u32,
    pub window_secs: u64,
    /// Only these names are watched; empty (the default) watches every name.
    #[serde(default)]
    pub names: Vec<String>,
}

/// `clock_skew`: the client's clock or the event time too far from the server's `received_at`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSkewRule {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Largest tolerated distance into the past, seconds.
    pub max_past_secs: u64,
    /// Largest tolerated distance into the future, seconds.
    pub max_future_secs: u64,
    /// After an alert, further skewed events of the same subject raise nothing for this long
    /// (server time, `received_at`).
    pub cooldown_secs: u64,
}

fn yes() -> bool {
    true
}

/// Every rule and the memory bound.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FraudConfig {
    /// A user (`user_id`, else `anonymous_id`) sending more than N events within W.
    pub user_rate: WindowRule,
    /// One IP (`context.ip`) seen with more than N distinct users within W.
    pub ip_many_users: IpRule,
    /// One user sending one event name more than N times within W.
    pub name_burst: NameBurstRule,
    /// Events whose time, or whose client clock, is far from the server's.
    pub clock_skew: ClockSkewRule,
    /// Most subjects (users, IPs, user+name pairs, over all rules) kept in memory; past it the
    /// least recently seen are evicted.
    pub max_subjects: usize,
    /// Extra log time re-read at start beyond the longest window (late and out-of-order events).
    pub rebuild_slack_secs: u64,
}

impl Default for FraudConfig {
    fn default() -> Self {
        FraudConfig {
            user_rate: WindowRule {
                enabled: true,
                threshold: 100,
                window_secs: 10,
            },
            ip_many_users: IpRule {
                enabled: true,
                threshold: 20,
                window_secs: 60,
                include_private: false,
            },
            name_burst: NameBurstRule {
                enabled: true,
                threshold: 20,
                window_secs: 10,
                names: Vec::new(),
            },
            clock_skew: ClockSkewRule {
                enabled: true,
                max_past_secs: 24 * 3600,
                max_future_secs: 600,
                cooldown_secs: 3600,
            },
            max_subjects: 1_000_000,
            rebuild_slack_secs: 60,
        }
    }
}

impl FraudConfig {
    /// Check the values; the message names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        for (name, secs) in [
            ("user_rate", self.user_rate.window_secs),
            ("ip_many_users", self.ip_many_users.window_secs),
            ("name_burst", self.name_burst.window_secs),
        ] {
            if secs == 0 || secs > 86_400 {
                return Err(format!(
                    "fraud.{name}.window_secs must be 1..=86400, got {secs}"
                ));
            }
        }
        if self.max_subjects == 0 {
            return Err("fraud.max_subjects must be at least 1".into());
        }
        Ok(())
    }

    /// The longest event-time window of an enabled windowed rule.
    pub fn longest_window(&self) -> Duration {
        let mut secs = 0;
        if self.user_rate.enabled {
            secs = secs.max(self.user_rate.window_secs);
        }
        if self.ip_many_users.enabled {
            secs = secs.max(self.ip_many_users.window_secs);
        }
        if self.name_burst.enabled {
            secs = secs.max(self.name_burst.window_secs);
        }
        Duration::from_secs(secs)
    }

    /// How much log (by append time) is re-read before the committed positions at start.
    pub fn rebuild_horizon(&self) -> Duration {
        self.longest_window() + Duration::from_secs(self.rebuild_slack_secs)
    }

    /// How far back the committed alerts are loaded to restore cooldowns.
    pub fn cooldown_lookback(&self) -> Duration {
        let skew = if self.clock_skew.enabled {
            self.clock_skew.cooldown_secs
        } else {
            0
        };
        (self.rebuild_horizon() * 2).max(Duration::from_secs(skew) + self.rebuild_horizon())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_shape_is_strict_and_partial() {
        let c: FraudConfig = serde_json::from_value(serde_json::json!({
            "user_rate": {"threshold": 5, "window_secs": 2},
            "name_burst": {"threshold": 3, "window_secs": 1, "names": ["login_failed"]}
        }))
        .expect("partial config");
        assert_eq!(c.user_rate.threshold, 5);
        assert!(c.user_rate.enabled);
        assert_eq!(c.ip_many_users, FraudConfig::default().ip_many_users);
        assert_eq!(c.name_burst.names, vec!["login_failed".to_string()]);
        let bad = serde_json::from_value::<FraudConfig>(serde_json::json!({"user_rat": {}}));
        assert!(bad.is_err());
        let bad = serde_json::from_value::<FraudConfig>(serde_json::json!({
            "user_rate": {"threshold": 5, "window_secs": 2, "windw": 3}
        }));
        assert!(bad.is_err());
    }

    #[test]
    fn horizon_covers_the_longest_window() {
        let c = FraudConfig::default();
        assert_eq!(c.longest_window(), Duration::from_secs(60));
        assert_eq!(c.rebuild_horizon(), Duration::from_secs(120));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn private_addresses_are_not_watched_by_default() {
        let mut r = FraudConfig::default().ip_many_users;
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.9",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!r.watches(ip), "{ip}");
        }
        for ip in ["203.0.113.7", "8.8.8.8", "2001:db8::1", "not-an-ip"] {
            assert!(r.watches(ip), "{ip}");
        }
        r.include_private = true;
        assert!(r.watches("127.0.0.1"));
    }
}
