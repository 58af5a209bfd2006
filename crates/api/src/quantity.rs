//! Kubernetes quantities (`500Gi`, `1.5G`, `2e9`) as byte counts, for the sizes cstor
//! compares and sums: volume capacity (CVC, CV, PVC), pool space, and the
//! `requests.storage` of ResourceQuotas. Exact integer arithmetic, no floating point: a
//! quantity is a decimal number times a power of 2 or 10, and fractions of a byte round
//! up (a volume is never smaller than asked).

use crate::limits::QUANTITY_LEN_MAX;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity is not a byte count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantityError {
    /// Not in the Kubernetes quantity grammar.
    #[error("quantity {0:?} is not a number with an optional suffix (e.g. 5Gi, 500M, 1e9)")]
    Malformed(String),
    /// Negative sizes make no sense.
    #[error("quantity {0:?} is negative")]
    Negative(String),
    /// Does not fit in 64 bits of bytes.
    #[error("quantity {0:?} is larger than 2^64-1 bytes")]
    TooLarge(String),
}

/// Parses a quantity into bytes, rounding a fraction of a byte up.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let malformed = || QuantityError::Malformed(text.to_owned());
    if text.is_empty() || text.len() > QUANTITY_LEN_MAX {
        return Err(malformed());
    }
    let (negative, rest) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, suffix) = rest.split_at(number_len);
    let (int_digits, frac_digits) = number.split_once('.').unwrap_or((number, ""));
    if (int_digits.is_empty() && frac_digits.is_empty()) || frac_digits.contains('.') {
        return Err(malformed());
    }
    // (base, exponent): the value is number * base^exponent.
    let (base, exponent): (u128, i32) = match suffix {
        "" => (10, 0),
        "Ki" => (2, 10),
        "Mi" => (2, 20),
        "Gi" => (2, 30),
        "Ti" => (2, 40),
        "Pi" => (2, 50),
        "Ei" => (2, 60),
        "n" => (10, -9),
        "u" => (10, -6),
        "m" => (10, -3),
        "k" => (10, 3),
        "M" => (10, 6),
        "G" => (10, 9),
        "T" => (10, 12),
        "P" => (10, 15),
        "E" => (10, 18),
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().map_err(|_| malformed())?;
            (10, e)
        }
        _ => return Err(malformed()),
    };
    let digits = format!("{int_digits}{frac_digits}");
    let too_large = || QuantityError::TooLarge(text.to_owned());
    let mantissa: u128 = digits.trim_start_matches('0').parse().or_else(|_| {
        if digits.bytes().all(|b| b == b'0') {
            Ok(0)
        } else {
            Err(too_large())
        }
    })?;
    if negative && mantissa != 0 {
        return Err(QuantityError::Negative(text.to_owned()));
    }
    let frac_len = i32::try_from(frac_digits.len()).map_err(|_| malformed())?;
    // value = mantissa * base^exponent / 10^frac_len, computed as numerator/denominator.
    let pow = |b: u128, e: i32| -> Option<u128> { b.checked_pow(u32::try_from(e).ok()?) };
    // A denominator beyond u128 exceeds any mantissa (at most 39 digits), so the value is
    // a fraction of one byte: 1 byte after rounding up, or 0.
    let tiny = u64::from(mantissa != 0);
    let Some(mut denominator) = pow(10, frac_len) else {
        return Ok(tiny);
    };
    let mut numerator = mantissa;
    if exponent >= 0 {
        numerator = numerator
            .checked_mul(pow(base, exponent).ok_or_else(too_large)?)
            .ok_or_else(too_large)?;
    } else {
        match pow(base, -exponent).and_then(|d| denominator.checked_mul(d)) {
            Some(d) => denominator = d,
            None => return Ok(tiny),
        }
    }
    let bytes = numerator.div_ceil(denominator);
    u64::try_from(bytes).map_err(|_| too_large())
}

/// A [`Quantity`] in bytes.
pub fn quantity_bytes(quantity: &Quantity) -> Result<u64, QuantityError> {
    parse_bytes(quantity.0.trim())
}

/// Bytes as a quantity with the largest binary suffix that is exact (`5Gi`, `1536Mi`,
/// `1000`), the form cstor writes into status fields.
pub fn format_bytes(bytes: u64) -> String {
    const SUFFIXES: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    if bytes == 0 {
        return "0".to_owned();
    }
    for (suffix, shift) in SUFFIXES {
        let unit = 1u64 << shift;
        if bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// `bytes` to three significant digits with the largest binary suffix not above it,
/// rounded down (`39.7Gi`, `2.57Mi`, `50Ki`, `999`): the pool and replica space shown in
/// `kubectl get cspi,cvr` columns, as cStor showed zfs's short sizes. Rounding down keeps
/// a pool's free space from being overstated; exact counts are in `cstor pool status`
/// and the metrics.
pub fn format_bytes_short(bytes: u64) -> String {
    const SUFFIXES: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    let Some((suffix, shift)) = SUFFIXES.into_iter().find(|(_, s)| bytes >> s > 0) else {
        return bytes.to_string();
    };
    let whole = bytes >> shift;
    // Digits after the point that keep three significant ones (none from 100 up).
    let decimals = match whole {
        0..=9 => 2,
        10..=99 => 1,
        _ => 0,
    };
    let scale = 10u128.pow(decimals);
    let scaled = (u128::from(bytes) * scale) >> shift;
    let int = scaled / scale;
    let frac = scaled % scale;
    let mut text = if decimals == 0 {
        int.to_string()
    } else {
        format!("{int}.{frac:0width$}", width = decimals as usize)
    };
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_and_fractions() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("500Gi", 500 << 30),
            ("50Gi", 50 << 30),
            ("9Gi", 9 << 30),
            ("1Ki", 1024),
            ("1.5Gi", 1536 << 20),
            ("1G", 1_000_000_000),
            ("2e3", 2000),
            ("2E3", 2000),
            ("1.5k", 1500),
            ("536870912000", 536_870_912_000),
            ("100m", 1),
            ("1500m", 2),
            ("0.1", 1),
            ("+5Mi", 5 << 20),
            ("-0", 0),
            ("15Ei", 15 << 60),
            (".5Ki", 512),
            ("5.", 5),
            ("1e-40", 1),
            ("0e-40", 0),
            ("0.00000000000000000000000000000000000000000001", 1),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_bytes(text), Ok(*bytes), "{text}");
        }
    }

    #[test]
    fn bad_quantities_are_errors_not_panics() {
        for text in [
            "",
            "Gi",
            "5 Gi",
            "5gi",
            "5GiB",
            "1.2.3",
            "e5",
            "5e",
            "5ex",
            "-1Gi",
            "16Ei",
            "1e20",
            "99999999999999999999999999999999999999999",
        ] {
            assert!(parse_bytes(text).is_err(), "{text}");
        }
        assert!(matches!(
            parse_bytes("-1Gi"),
            Err(QuantityError::Negative(_))
        ));
        assert!(matches!(
            parse_bytes("16Ei"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(parse_bytes(&"9".repeat(QUANTITY_LEN_MAX + 1)).is_err());
        assert!(parse_bytes("1e-99999999999").is_err());
    }

    #[test]
    fn short_sizes_have_three_digits_and_never_round_up() {
        let cases: &[(u64, &str)] = &[
            (0, "0"),
            (999, "999"),
            (1024, "1Ki"),
            (50 * 1024 + 1000, "50.9Ki"),
            (42_627_207_987, "39.6Gi"),
            (42_681_000_000, "39.7Gi"),
            ((1 << 30) - 1, "1023Mi"),
            (2_694_840, "2.56Mi"),
            (u64::MAX, "15.9Ei"),
        ];
        for (bytes, text) in cases {
            let got = format_bytes_short(*bytes);
            assert_eq!(&got, text, "{bytes}");
            let back = parse_bytes(&got).unwrap();
            assert!(
                back <= bytes.saturating_add(1),
                "{bytes} shown as {got} = {back}"
            );
        }
    }

    #[test]
    fn format_round_trips() {
        for bytes in [
            0u64,
            1,
            1000,
            1024,
            1536 << 20,
            5 << 30,
            500 << 30,
            u64::MAX,
        ] {
            assert_eq!(parse_bytes(&format_bytes(bytes)), Ok(bytes));
        }
        assert_eq!(format_bytes(5 << 30), "5Gi");
        assert_eq!(format_bytes(1536 << 20), "1536Mi");
        assert_eq!(quantity_bytes(&Quantity("50Gi".into())), Ok(50 << 30));
    }
}
