//! RFC 3339 timestamps (UTC, second precision) as Kubernetes writes them, and the short
//! "age" strings `kubectl get` shows. Civil-date arithmetic after Howard Hinnant's
//! days_from_civil, so no calendar crate is needed.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch now.
/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `2026-11-21T13:59:02Z` for a Unix time.
pub(crate) fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The current time as RFC 3339.
pub(crate) fn now_rfc3339() -> String {
    format_rfc3339(now_secs())
}

/// Microsecond timestamp (`MicroTime`) as used by events.k8s.io eventTime and managedFields.
pub(crate) fn now_rfc3339_micro() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let s = format_rfc3339(now.as_secs() as i64);
    format!("{}.{:06}Z", &s[..s.len() - 1], now.subsec_micros())
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`; None when malformed.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (rest.get(1..3)?.parse::<i64>().ok()? * 3600
                + rest.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

/// kubectl's short duration: `45s`, `5m`, `3h`, `2d`; negative ages show as `0s`.
pub(crate) fn short_age(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        format!("{s}s")
    } else if s < 600 {
        with_rest(s / 60, "m", s % 60, "s")
    } else if s < 3 * 3600 {
        format!("{}m", s / 60)
    } else if s < 8 * 3600 {
        with_rest(s / 3600, "h", (s / 60) % 60, "m")
    } else if s < 48 * 3600 {
        format!("{}h", s / 3600)
    } else if s < 8 * 86_400 {
        with_rest(s / 86_400, "d", (s / 3600) % 24, "h")
    } else if s < 365 * 86_400 * 2 {
        format!("{}d", s / 86_400)
    } else {
        format!("{}y", s / (365 * 86_400))
    }
}

fn with_rest(major: i64, major_unit: &str, minor: i64, minor_unit: &str) -> String {
    if minor == 0 {
        format!("{major}{major_unit}")
    } else {
        format!("{major}{major_unit}{minor}{minor_unit}")
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        for secs in [0, 1_000_000_000, 1_795_269_542, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Some(secs));
        }
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2026-11-21T13:59:02.123456Z"),
            parse_rfc3339("2026-11-21T13:59:02Z")
        );
        assert_eq!(
            parse_rfc3339("2026-11-21T15:59:02+02:00"),
            parse_rfc3339("2026-11-21T13:59:02Z")
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn short_age_matches_kubectl() {
        assert_eq!(short_age(5), "5s");
        assert_eq!(short_age(150), "2m30s");
        assert_eq!(short_age(3600), "60m");
        assert_eq!(short_age(5 * 3600 + 60), "5h1m");
        assert_eq!(short_age(3 * 86_400), "3d");
    }
}
