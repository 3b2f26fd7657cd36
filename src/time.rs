//! Clock reads and the timestamp formats the service writes: the seed's `createdAt`
//! (`2023-04-21T12:40:19.925Z`), the seed's `date` header (RFC 3339 with nanoseconds and
//! `+00:00`) and the RFC 9110 IMF-fixdate. The formatters are pure and write into fixed-size
//! arrays, so they never allocate and are unit-tested at fixed instants. Also the one grammar
//! for durations (`250ms`, `1.5s`), shared by the flags and the behaviour controls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BufMut;

use clap::ValueEnum;

/// Which form the `date` response header takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DateHeader {
    /// RFC 3339 with nanoseconds, as the seed sends: `2023-04-21T12:40:19.925350124+00:00`.
    #[default]
    Rfc3339,
    /// RFC 9110 IMF-fixdate, for clients and caches that parse `date`: `Fri, 21 Apr 2023 12:40:19 GMT`.
    Http,
}

/// Length of `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub const CREATED_AT_LEN: usize = 24;
/// Length of `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn+00:00`.
pub const RFC3339_NANOS_LEN: usize = 35;
/// Length of `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const IMF_FIXDATE_LEN: usize = 29;

/// Time since the Unix epoch, read from the system (wall) clock. Only the `date` header and
/// the `createdAt` value come from it: every timeout, deadline and measured duration comes
/// from the monotonic clock (`tokio::time::Instant`), so a clock stepped by NTP or by hand
/// neither cuts connections short nor keeps them open, nor shows up in latency metrics.
///
/// A clock set before 1970 reads as the epoch itself rather than failing: the service keeps
/// answering, with a visibly wrong date, instead of erroring on every request.
pub fn now() -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    #[cfg(feature = "test-clock")]
    let now = testing::shifted(now);
    now
}

/// A wall clock that tests can step, to show that nothing but dates follows it. Built only
/// with the `test-clock` feature (the integration tests' build), never in a release.
#[cfg(feature = "test-clock")]
pub mod testing {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::Duration;

    /// Seconds added to the system clock's reading.
    static SHIFT: AtomicI64 = AtomicI64::new(0);

    /// Steps this process's wall clock by `seconds` (negative: back in time).
    pub fn shift(seconds: i64) {
        SHIFT.fetch_add(seconds, Ordering::Relaxed);
    }

    pub(super) fn shifted(now: Duration) -> Duration {
        let shift = SHIFT.load(Ordering::Relaxed);
        let by = Duration::from_secs(shift.unsigned_abs());
        if shift >= 0 {
            now.saturating_add(by)
        } else {
            now.saturating_sub(by)
        }
    }
}

/// A UTC calendar date and time of day, broken down from seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: u64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 0 = Sunday.
    weekday: u8,
}

impl Civil {
    fn from_unix_secs(secs: u64) -> Civil {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday.
            weekday: ((days + 4) % 7) as u8,
        }
    }

    /// Writes `YYYY-MM-DDTHH:MM:SS` into the first 19 bytes of `out`.
    fn write_iso(&self, out: &mut [u8]) {
        write_digits(&mut out[0..4], self.year);
        out[4] = b'-';
        write_digits(&mut out[5..7], self.month.into());
        out[7] = b'-';
        write_digits(&mut out[8..10], self.day.into());
        out[10] = b'T';
        self.write_clock(&mut out[11..19]);
    }

    /// Writes `HH:MM:SS` into `out`.
    fn write_clock(&self, out: &mut [u8]) {
        write_digits(&mut out[0..2], self.hour.into());
        out[2] = b':';
        write_digits(&mut out[3..5], self.minute.into());
        out[5] = b':';
        write_digits(&mut out[6..8], self.second.into());
    }
}

/// Converts days since 1970-01-01 into (year, month, day) in the proleptic Gregorian calendar.
///
/// Howard Hinnant's `civil_from_days`, restricted to dates on or after the epoch: eras are
/// 400-year cycles starting on March 1st, so February's variable length falls at the end of
/// each computed year.
fn civil_from_days(days: u64) -> (u64, u8, u8) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes `value` as zero-padded decimal filling all of `out` (higher digits are dropped).
fn write_digits(out: &mut [u8], mut value: u64) {
    for byte in out.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Formats `since_epoch` as the seed's `createdAt`: `2023-04-21T12:40:19.925Z`.
pub fn created_at(since_epoch: Duration) -> [u8; CREATED_AT_LEN] {
    let mut out = [0u8; CREATED_AT_LEN];
    Civil::from_unix_secs(since_epoch.as_secs()).write_iso(&mut out);
    out[19] = b'.';
    write_digits(&mut out[20..23], since_epoch.subsec_millis().into());
    out[23] = b'Z';
    out
}

/// Appends the `date` header's value for `since_epoch` in the configured form.
pub fn put_date(form: DateHeader, since_epoch: Duration, out: &mut impl BufMut) {
    match form {
        DateHeader::Rfc3339 => out.put_slice(&rfc3339_nanos(since_epoch)),
        DateHeader::Http => out.put_slice(&imf_fixdate(since_epoch)),
    }
}

/// Rewrites `out`, a `date` value [`put_date`] wrote in the `form` for an instant, as it
/// writes it for `since_epoch`; only the digits under the second unless `whole` (the
/// instants' seconds differ).
pub fn redate(form: DateHeader, since_epoch: Duration, out: &mut [u8], whole: bool) {
    match (form, whole) {
        (DateHeader::Rfc3339, false) => {
            write_digits(&mut out[20..29], since_epoch.subsec_nanos().into());
        }
        (DateHeader::Rfc3339, true) => out.copy_from_slice(&rfc3339_nanos(since_epoch)),
        (DateHeader::Http, false) => {}
        (DateHeader::Http, true) => out.copy_from_slice(&imf_fixdate(since_epoch)),
    }
}

/// Rewrites `out`, a [`created_at`] value, as [`created_at`] writes it for `since_epoch`;
/// only the milliseconds unless `whole` (the instants' seconds differ).
pub fn redate_created_at(since_epoch: Duration, out: &mut [u8], whole: bool) {
    if whole {
        out.copy_from_slice(&created_at(since_epoch));
    } else {
        write_digits(&mut out[20..23], since_epoch.subsec_millis().into());
    }
}

/// Formats `since_epoch` as the seed's `date` header: `2023-04-21T12:40:19.925350124+00:00`.
pub fn rfc3339_nanos(since_epoch: Duration) -> [u8; RFC3339_NANOS_LEN] {
    let mut out = [0u8; RFC3339_NANOS_LEN];
    Civil::from_unix_secs(since_epoch.as_secs()).write_iso(&mut out);
    out[19] = b'.';
    write_digits(&mut out[20..29], since_epoch.subsec_nanos().into());
    out[29..].copy_from_slice(b"+00:00");
    out
}

/// Formats `since_epoch` as an RFC 9110 IMF-fixdate: `Sat, 28 Nov 2026 19:04:11 GMT`.
pub fn imf_fixdate(since_epoch: Duration) -> [u8; IMF_FIXDATE_LEN] {
    const WEEKDAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let civil = Civil::from_unix_secs(since_epoch.as_secs());
    let mut out = [0u8; IMF_FIXDATE_LEN];
    out[0..3].copy_from_slice(WEEKDAYS[usize::from(civil.weekday)]);
    out[3..5].copy_from_slice(b", ");
    write_digits(&mut out[5..7], civil.day.into());
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[usize::from(civil.month - 1)]);
    out[11] = b' ';
    write_digits(&mut out[12..16], civil.year);
    out[16] = b' ';
    civil.write_clock(&mut out[17..25]);
    out[25..].copy_from_slice(b" GMT");
    out
}

/// Parses a duration such as `10s`, `250ms`, `1.5s`, `150us`, `2m` or `1h`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    const EXPECTED: &str =
        "expected a number with a unit: ns, us, ms, s, m or h (e.g. 250ms, 1.5s)";
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| EXPECTED.to_owned())?;
    let (number, unit) = value.split_at(split);
    let nanos_per_unit: f64 = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => return Err(EXPECTED.to_owned()),
    };
    let number: f64 = number.parse().map_err(|_| EXPECTED.to_owned())?;
    let nanos = number * nanos_per_unit;
    // A year is far beyond any timeout or delay this service has a use for.
    if !nanos.is_finite() || nanos > 365.0 * 86_400e9 {
        return Err("duration too large".to_owned());
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> Duration {
        Duration::new(secs, nanos)
    }

    fn text<const N: usize>(bytes: [u8; N]) -> String {
        String::from_utf8(bytes.to_vec()).expect("formatters write ASCII")
    }

    #[test]
    fn epoch_formats_in_all_three_forms() {
        assert_eq!(text(created_at(at(0, 0))), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            text(rfc3339_nanos(at(0, 0))),
            "1970-01-01T00:00:00.000000000+00:00"
        );
        assert_eq!(text(imf_fixdate(at(0, 0))), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn seed_instant_matches_the_seed_document() {
        // `date: 2023-04-21T12:40:19.925350124+00:00` from the seed's curl output.
        let instant = at(1_682_080_819, 925_350_124);
        assert_eq!(text(created_at(instant)), "2023-04-21T12:40:19.925Z");
        assert_eq!(
            text(rfc3339_nanos(instant)),
            "2023-04-21T12:40:19.925350124+00:00"
        );
        assert_eq!(text(imf_fixdate(instant)), "Fri, 21 Apr 2023 12:40:19 GMT");
    }

    #[test]
    fn leap_day_and_the_day_after() {
        // 2024-02-29T23:59:59 UTC.
        let leap = at(1_709_251_199, 0);
        assert_eq!(text(created_at(leap)), "2024-02-29T23:59:59.000Z");
        assert_eq!(text(imf_fixdate(leap)), "Thu, 29 Feb 2024 23:59:59 GMT");
        assert_eq!(
            text(created_at(leap + Duration::from_secs(1))),
            "2024-03-01T00:00:00.000Z"
        );
        // 2000 is a leap year (divisible by 400): 2000-02-29T12:00:00.
        assert_eq!(
            text(imf_fixdate(at(951_825_600, 0))),
            "Tue, 29 Feb 2000 12:00:00 GMT"
        );
    }

    #[test]
    fn non_leap_century_goes_from_february_28_to_march_1() {
        // 2100-02-28T23:59:59 UTC; 2100 is not a leap year.
        let last = at(4_107_542_399, 0);
        assert_eq!(text(created_at(last)), "2100-02-28T23:59:59.000Z");
        assert_eq!(
            text(created_at(last + Duration::from_secs(1))),
            "2100-03-01T00:00:00.000Z"
        );
    }

    #[test]
    fn month_and_year_ends_roll_over() {
        // 2026-04-30T23:59:59.999 -> 2026-05-01T00:00:00.000.
        let april_end = at(1_777_593_599, 999_000_000);
        assert_eq!(text(created_at(april_end)), "2026-04-30T23:59:59.999Z");
        assert_eq!(
            text(created_at(april_end + Duration::from_millis(1))),
            "2026-05-01T00:00:00.000Z"
        );
        // 2026-12-31T23:59:59.999999999 -> 2027-01-01T00:00:00.
        let year_end = at(1_798_761_599, 999_999_999);
        assert_eq!(
            text(rfc3339_nanos(year_end)),
            "2026-12-31T23:59:59.999999999+00:00"
        );
        assert_eq!(text(imf_fixdate(year_end)), "Thu, 31 Dec 2026 23:59:59 GMT");
        assert_eq!(
            text(rfc3339_nanos(year_end + Duration::from_nanos(1))),
            "2027-01-01T00:00:00.000000000+00:00"
        );
    }

    #[test]
    fn millisecond_999_is_truncated_not_rounded() {
        let instant = at(1_798_761_599, 999_999_999);
        assert_eq!(text(created_at(instant)), "2026-12-31T23:59:59.999Z");
        let instant = at(1_798_761_599, 998_999_999);
        assert_eq!(text(created_at(instant)), "2026-12-31T23:59:59.998Z");
    }

    #[test]
    fn weekdays_cycle_through_a_week() {
        // 2026-11-22 was a Sunday.
        let sunday = 1_795_305_600;
        let names: Vec<String> = (0..7)
            .map(|day| text(imf_fixdate(at(sunday + day * 86_400, 0)))[..3].to_owned())
            .collect();
        assert_eq!(names, ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]);
    }

    #[test]
    fn civil_dates_agree_with_a_day_by_day_walk() {
        // Walk every day from 1970 to 2400 and check the calendar against a naive counter.
        let (mut year, mut month, mut day) = (1970u64, 1u8, 1u8);
        for days in 0..157_000u64 {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            let month_len = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > month_len {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }

    #[test]
    fn durations_take_every_unit() {
        for (text, expected) in [
            ("150us", Duration::from_micros(150)),
            ("250ms", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0s", Duration::ZERO),
            ("10ns", Duration::from_nanos(10)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in [
            "", "10", "s", "1.2.3s", "-1s", "1 s", "1d", "1e400s", "9999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
