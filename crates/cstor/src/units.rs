//! Human sizes on the command line: `10G`, `512`, `4K`, `1.5T`, `64KiB`.
//!
//! Suffixes are binary (K = 1024), as cStor and ZFS users expect; the result is exact bytes
//! and never silently rounded: a fractional size that is not a whole number of bytes is
//! refused.

/// Parse a size with an optional K/M/G/T/P suffix (optionally followed by `i`, `iB` or `B`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KI" | "KIB" => 10,
        "M" | "MB" | "MI" | "MIB" => 20,
        "G" | "GB" | "GI" | "GIB" => 30,
        "T" | "TB" | "TI" | "TIB" => 40,
        "P" | "PB" | "PI" | "PIB" => 50,
        other => {
            return Err(format!(
                "size {text:?}: unknown suffix {other:?} (use K, M, G, T)"
            ))
        }
    };
    let unit: u128 = 1u128 << shift;
    let bytes: u128 = match number.split_once('.') {
        None => number
            .parse::<u128>()
            .map_err(|_| format!("size {text:?} is not a number"))?
            .checked_mul(unit)
            .ok_or_else(|| format!("size {text:?} is too large"))?,
        Some((whole, frac)) => {
            if frac.is_empty() || frac.len() > 12 || whole.is_empty() {
                return Err(format!("size {text:?} is not a number"));
            }
            let whole: u128 = whole
                .parse()
                .map_err(|_| format!("size {text:?} is not a number"))?;
            let frac_digits: u128 = frac
                .parse()
                .map_err(|_| format!("size {text:?} is not a number"))?;
            let scale = 10u128.pow(frac.len() as u32);
            let frac_bytes = frac_digits * unit;
            if !frac_bytes.is_multiple_of(scale) {
                return Err(format!("size {text:?} is not a whole number of bytes"));
            }
            whole
                .checked_mul(unit)
                .and_then(|w| w.checked_add(frac_bytes / scale))
                .ok_or_else(|| format!("size {text:?} is too large"))?
        }
    };
    u64::try_from(bytes).map_err(|_| format!("size {text:?} is too large"))
}

/// Bytes as a short human string with a binary suffix (`1.5G`, `512K`, `100`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["", "K", "M", "G", "T", "P"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}")
    } else if value >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// A duration like `120s`, `1.5s` or `500ms` (positive).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let t = s.trim();
    let d = if let Some(ms) = t.strip_suffix("ms") {
        ms.trim().parse::<u64>().ok().map(Duration::from_millis)
    } else {
        let secs = t.strip_suffix('s').unwrap_or(t).trim();
        secs.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x > 0.0 && *x < 1e9)
            .map(Duration::from_secs_f64)
    };
    d.filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration like 120s or 500ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("10T").unwrap(), 10 << 40);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2m").unwrap(), 2 << 20);
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in ["", "G", "1X", "-1", "1.G", "0.3", "99999999999P", "1..2K"] {
            assert!(parse_size(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn sizes_format_shortly() {
        assert_eq!(format_size(100), "100");
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(3 << 29), "1.5G");
        assert_eq!(format_size(500 << 30), "500G");
    }
}
