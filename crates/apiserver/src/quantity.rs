//! Kubernetes resource quantities (`10Gi`, `500M`, `1.5Ti`, `100m`, `2`), as exact
//! milli-units in an i128 so sums of many PVC sizes cannot overflow or round.

/// Parses a quantity into milli-units; None when malformed.
pub(crate) fn parse_milli(s: &str) -> Option<i128> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let mult: i128 = match suffix {
        "" => 1000,
        "m" => 1,
        "k" => 1000 * 1000,
        "M" => 1000 * 1_000_000,
        "G" => 1000 * 1_000_000_000,
        "T" => 1000 * 1_000_000_000_000,
        "P" => 1000 * 1_000_000_000_000_000,
        "Ki" => 1000 << 10,
        "Mi" => 1000 << 20,
        "Gi" => 1000 << 30,
        "Ti" => 1000 << 40,
        "Pi" => 1000 << 50,
        "Ei" => 1000 << 60,
        _ => return None,
    };
    if num.is_empty() {
        return None;
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let neg = int.starts_with('-');
    let int: i128 = int.trim_start_matches(['+', '-']).parse().ok().or(
        if int.trim_start_matches(['+', '-']).is_empty() {
            Some(0)
        } else {
            None
        },
    )?;
    let mut value = int.checked_mul(mult)?;
    if !frac.is_empty() {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let f: i128 = frac.parse().ok()?;
        value = value.checked_add(f.checked_mul(mult)? / 10i128.pow(frac.len() as u32))?;
    }
    Some(if neg { -value } else { value })
}

/// Formats milli-units the way quota status shows them: the largest binary suffix that
/// divides exactly, else a plain number.
pub(crate) fn format_milli(m: i128) -> String {
    if m % 1000 != 0 {
        return format!("{m}m");
    }
    let units = m / 1000;
    if units == 0 {
        return "0".into();
    }
    for (shift, suffix) in [(50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if units % (1i128 << shift) == 0 {
            return format!("{}{suffix}", units >> shift);
        }
    }
    units.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_and_format() {
        assert_eq!(parse_milli("10Gi"), Some(10_000i128 << 30));
        assert_eq!(parse_milli("1.5Gi"), Some(1500i128 << 30));
        assert_eq!(parse_milli("5"), Some(5000));
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1G"), Some(1_000_000_000_000));
        assert_eq!(parse_milli("abc"), None);
        assert_eq!(parse_milli("10Xi"), None);
        assert_eq!(format_milli(parse_milli("3Gi").unwrap()), "3Gi");
        assert_eq!(format_milli(parse_milli("2").unwrap()), "2");
        assert_eq!(format_milli(0), "0");
    }
}
