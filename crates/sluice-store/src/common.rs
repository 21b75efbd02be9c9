//! Helpers both warehouse backends share: log positions for `consumer_offsets`, key generation.

use rand::RngCore;
use sluice_core::keys::KeyKind;
use sluice_core::warehouse::StoreError;

/// A log position as two comparable numbers for the `consumer_offsets` table (see
/// [`sluice_core::log::parse_position`]).
pub(crate) fn parse_log_id(id: &str) -> Result<(i64, i64), StoreError> {
    let bad = || StoreError::Invalid(format!("log position {id:?} is not `ms-seq` or a number"));
    let (ms, seq) = sluice_core::log::parse_position(id).ok_or_else(bad)?;
    Ok((
        i64::try_from(ms).map_err(|_| bad())?,
        i64::try_from(seq).map_err(|_| bad())?,
    ))
}

/// A new API key: `{prefix}` + 32 hex chars of 16 random bytes from the OS-seeded thread RNG.
pub(crate) fn generate_key(kind: KeyKind) -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    format!("{}{}", kind.prefix(), hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ids_compare_numerically() {
        let a = parse_log_id("1700000000000-9").expect("valid");
        let b = parse_log_id("1700000000000-10").expect("valid");
        assert!(a < b, "seq 9 < seq 10 even though \"9\" > \"10\" as text");
        assert!(parse_log_id("999-0").expect("valid") < parse_log_id("1000-0").expect("valid"));
        assert_eq!(parse_log_id("42").expect("valid"), (42, 0));
        assert!(parse_log_id("x-1").is_err());
        assert!(parse_log_id("1-").is_err());
        assert!(parse_log_id("-1").is_err());
        assert!(
            parse_log_id("18446744073709551615-0").is_err(),
            "beyond i64"
        );
    }

    #[test]
    fn generated_keys_have_prefix_and_32_hex_chars() {
        let key = generate_key(KeyKind::Write);
        let rest = key.strip_prefix("sk_w_").expect("write prefix");
        assert_eq!(rest.len(), 32);
        assert!(rest.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(generate_key(KeyKind::Read), generate_key(KeyKind::Read));
    }
}
