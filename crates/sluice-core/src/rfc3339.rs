//! Writing and reading the log's timestamps fast. The canonical event writes every time as
//! chrono does, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`; consumers read four per event, and chrono's
//! general RFC 3339 parser was a tenth of the fraud processor's CPU. [`parse_utc`] reads that one
//! form directly and hands anything else (offsets, leap seconds, lowercase, spaces) to chrono, so
//! it accepts exactly what `DateTime<Utc>`'s `FromStr` (and serde) accepts, with the same result.
//! [`serialize`] writes the same text as chrono's `Serialize` without going through
//! `core::fmt` (which was a sixth of the API's cost of writing an event to the log).

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Parse an RFC 3339 time as chrono's `DateTime<Utc>::from_str` does.
pub fn parse_utc(s: &str) -> Option<DateTime<Utc>> {
    fast(s.as_bytes()).or_else(|| s.parse().ok())
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, or None.
fn fast(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || *b.last()? != b'Z'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let (month, day) = (digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
            digits(frac)? * 10u32.pow(9 - frac.len() as u32)
        }
        _ => return None,
    };
    if second > 59 {
        return None; // a leap second: chrono's rules
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    Some(
        date.and_hms_nano_opt(hour, minute, second, nanos)?
            .and_utc(),
    )
}

/// The text chrono's `Serialize` gives `t` (`to_rfc3339_opts(SecondsFormat::AutoSi, true)`:
/// no fraction, or 3, 6 or 9 digits, whichever shows it exactly), for years 0–9999 outside leap
/// seconds; None otherwise (chrono then writes it).
fn format(t: &DateTime<Utc>) -> Option<([u8; 30], usize)> {
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |at: usize, width: usize, mut n: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    put(17, 2, t.second());
    let digits = match nanos {
        0 => 0,
        n if n % 1_000_000 == 0 => 3,
        n if n % 1_000 == 0 => 6,
        _ => 9,
    };
    if digits == 0 {
        b[19] = b'Z';
        return Some((b, 20));
    }
    put(20, digits, nanos / 10u32.pow(9 - digits as u32));
    b[20 + digits] = b'Z';
    Some((b, 21 + digits))
}

/// `#[serde(serialize_with = "rfc3339::serialize")]` for a `DateTime<Utc>` field: the same
/// text as chrono's `Serialize`.
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    match format(t) {
        Some((b, len)) => {
            s.serialize_str(std::str::from_utf8(&b[..len]).map_err(serde::ser::Error::custom)?)
        }
        None => t.serialize(s),
    }
}

/// The same for an `Option<DateTime<Utc>>` field (use with `skip_serializing_if`).
pub fn serialize_option<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize(t, s),
        None => s.serialize_none(),
    }
}

/// `#[serde(deserialize_with = "rfc3339::deserialize")]` for a `DateTime<Utc>` field.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    parse_utc(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {s:?}")))
}

/// The same for an `Option<DateTime<Utc>>` field (use with `#[serde(default)]`).
pub fn deserialize_option<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    match <Option<std::borrow::Cow<'de, str>>>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_utc(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {s:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono_says(s: &str) -> Option<DateTime<Utc>> {
        s.parse().ok()
    }

    #[test]
    fn agrees_with_chrono_on_edge_cases() {
        for s in [
            "2026-11-27T07:11:06.497546Z",
            "2026-11-27T07:11:06Z",
            "2026-11-27T07:11:06.1Z",
            "2026-11-27T07:11:06.123456789Z",
            "2024-02-29T23:59:59.999Z",
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2016-12-31T23:59:60Z",
            "2026-11-27T07:11:06.1234567891Z",
            "2026-11-27T07:11:06.Z",
            "2026-11-27T07:11:06+02:00",
            "2026-11-27 07:11:06Z",
            "2026-11-27t07:11:06z",
            "+2026-11-27T07:11:06Z",
            "0000-01-01T00:00:00Z",
            "９９９９-01-01T00:00:00Z",
            "",
            "Z",
        ] {
            assert_eq!(parse_utc(s), chrono_says(s), "{s:?}");
        }
    }

    fn ours(t: DateTime<Utc>) -> String {
        #[derive(serde::Serialize)]
        struct Ours(#[serde(serialize_with = "serialize")] DateTime<Utc>);
        serde_json::to_string(&Ours(t)).expect("serializes")
    }

    #[test]
    fn writes_what_chrono_writes_on_edge_cases() {
        for (secs, nanos) in [
            (1_483_228_799, 1_500_000_000), // the leap second of 2016-12-31, chrono's `:60`
            (1_483_228_799, 1_000_000_000),
            (-62_167_219_200, 0),           // 0000-01-01
            (-62_167_219_201, 0),           // year -1
            (253_402_300_799, 999_999_999), // 9999-12-31T23:59:59.999999999
            (253_402_300_800, 0),           // year 10000
            (0, 1),
            (0, 1_000),
            (0, 1_000_000),
            (1_795_000_000, 120_000_000),
        ] {
            let t = DateTime::from_timestamp(secs, nanos).expect("representable");
            assert_eq!(
                ours(t),
                serde_json::to_string(&t).expect("serializes"),
                "{t:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn agrees_with_chrono_on_chrono_output(secs in -62_000_000_000i64..253_000_000_000i64, nanos in 0u32..1_000_000_000) {
            let t = DateTime::from_timestamp(secs, nanos).expect("in range");
            let s = serde_json::to_value(t).expect("ser");
            let s = s.as_str().expect("string");
            prop_assert_eq!(parse_utc(s), Some(t));
        }

        #[test]
        fn writes_what_chrono_writes(secs in -62_000_000_000i64..253_000_000_000i64, nanos in 0u32..1_000_000_000, digits in 0u32..4) {
            // Every fraction length chrono picks: 0, 3, 6 or 9 digits.
            let nanos = nanos - nanos % 10u32.pow(3 * digits);
            let t = DateTime::from_timestamp(secs, nanos).expect("in range");
            prop_assert_eq!(ours(t), serde_json::to_string(&t).expect("ser"));
        }

        #[test]
        fn agrees_with_chrono_on_anything(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,10})?(Z|[+-][0-9]{2}:[0-9]{2})") {
            prop_assert_eq!(parse_utc(&s), chrono_says(&s));
        }
    }
}
