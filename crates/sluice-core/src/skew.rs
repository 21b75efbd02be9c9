//! Segment's clock-skew correction.
//!
//! A client whose clock is wrong sends both its own event time (`timestamp`) and the time it sent
//! the request (`sentAt`), both from the same wrong clock. Their difference is the true age of the
//! event, so the corrected time is `received_at - (sent_at - original_timestamp)`.

use chrono::{DateTime, Utc};

/// The event time to store: corrected when both client times are known, the client's timestamp
/// when only it is known, the receive time otherwise.
pub fn corrected_timestamp(
    received_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    original_timestamp: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    match (sent_at, original_timestamp) {
        (Some(sent), Some(original)) => {
            let age = sent.signed_duration_since(original);
            received_at.checked_sub_signed(age).unwrap_or(original)
        }
        (None, Some(original)) => original,
        _ => received_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn corrects_a_fast_client_clock() {
        // Client clock 1 h ahead; event happened 5 s before sending.
        let received = t(0);
        let sent = t(3600);
        let original = t(3595);
        assert_eq!(
            corrected_timestamp(received, Some(sent), Some(original)),
            t(-5)
        );
    }

    #[test]
    fn without_sent_at_keeps_client_time() {
        assert_eq!(corrected_timestamp(t(0), None, Some(t(-30))), t(-30));
        assert_eq!(corrected_timestamp(t(0), None, None), t(0));
        assert_eq!(corrected_timestamp(t(0), Some(t(9)), None), t(0));
    }

    proptest! {
        #[test]
        fn age_is_preserved(skew in -86_400i64*365..86_400*365, age_ms in 0i64..86_400_000, recv in 0i64..1_000_000) {
            let received = t(recv);
            let true_time = received - Duration::milliseconds(age_ms);
            let original = true_time + Duration::seconds(skew);
            let sent = received + Duration::seconds(skew);
            prop_assert_eq!(corrected_timestamp(received, Some(sent), Some(original)), true_time);
        }
    }
}
