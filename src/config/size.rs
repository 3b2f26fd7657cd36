//! Sizes in bytes as flags write them: `512`, `64KiB`, `16MiB`, `1GB`.

/// Parses a size in bytes: `512`, `64KiB`, `16MiB`, `1GiB`, or decimal `kB`, `MB`, `GB`; at
/// least 1 byte, at most 1 TiB.
pub fn parse_size(value: &str) -> Result<usize, String> {
    const EXPECTED: &str = "expected a size such as 512, 64KiB, 16MiB or 1GiB";
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(EXPECTED.to_owned()),
    };
    let number: u64 = number.parse().map_err(|_| EXPECTED.to_owned())?;
    match number.checked_mul(multiplier) {
        Some(0) => Err("must be at least 1 byte".to_owned()),
        Some(bytes) if bytes <= 1 << 40 => usize::try_from(bytes).map_err(|_| EXPECTED.to_owned()),
        _ => Err("at most 1TiB".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        for (text, expected) in [
            ("512", 512),
            ("1B", 1),
            ("64KiB", 64 * 1024),
            ("16MiB", 16 << 20),
            ("1GiB", 1 << 30),
            ("2kB", 2_000),
            ("3MB", 3_000_000),
            ("1GB", 1_000_000_000),
        ] {
            assert_eq!(parse_size(text), Ok(expected), "{text}");
        }
        for bad in [
            "",
            "0",
            "0MiB",
            "-1",
            "1.5MiB",
            "16 MiB",
            "16mib",
            "2TiB",
            "99999999999GB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
