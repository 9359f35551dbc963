//! Dates and date-times as FHIR writes them.
//!
//! Records hold OpenMRS date-times (`2024-03-05T08:55:00.000+0300`, `2024-03-05T08:55`,
//! `2024-03-05`); FHIR `dateTime` wants `hh:mm:ss` and, whenever a time is given, a zone written
//! `Z` or `±hh:mm` (at most 14:00). `instant` (Appointment.start/end) always needs the time.

use crate::entity::{is_date, is_datetime};

/// A checked `YYYY-MM-DD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: u32,
    pub month: u32,
    pub day: u32,
}

impl Date {
    /// Parses `YYYY-MM-DD` (a real calendar date; year 0000 is not a FHIR year).
    pub fn parse(s: &str) -> Option<Date> {
        if !is_date(s) {
            return None;
        }
        let year = s.get(0..4)?.parse().ok()?;
        let month = s.get(5..7)?.parse().ok()?;
        let day = s.get(8..10)?.parse().ok()?;
        (year > 0).then_some(Date { year, month, day })
    }

    /// The UTC date of a Unix time in seconds.
    pub fn from_unix(secs: i64) -> Date {
        // Howard Hinnant's civil_from_days.
        let z = secs.div_euclid(86_400) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        Date { year, month, day }
    }

    /// Whole years from `self` to `later` (Java's `Period.between(a, b).getYears()`).
    pub fn years_until(&self, later: &Date) -> i64 {
        let mut years = i64::from(later.year) - i64::from(self.year);
        if (later.month, later.day) < (self.month, self.day) {
            years -= 1;
        }
        years
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Parses a UTC offset `Z`, `±hh:mm` or `±hhmm` into FHIR's `Z` / `±hh:mm` (at most 14:00).
pub fn parse_offset(zone: &str) -> Option<String> {
    if zone == "Z" {
        return Some("Z".into());
    }
    // Byte slicing below relies on ASCII.
    if !zone.is_ascii() {
        return None;
    }
    let (sign, rest) = zone.split_at_checked(1)?;
    if sign != "+" && sign != "-" {
        return None;
    }
    let (h, m) = match rest.len() {
        5 if rest.as_bytes()[2] == b':' => (&rest[..2], &rest[3..]),
        4 => (&rest[..2], &rest[2..]),
        _ => return None,
    };
    if !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (hv, mv): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    if mv > 59 || hv > 14 || (hv == 14 && mv != 0) {
        return None;
    }
    Some(format!("{sign}{h}:{m}"))
}

/// A FHIR `dateTime`: a date stays a date; a time gets seconds and its zone in FHIR form, or
/// `default_offset` when it has none. The error says what is wrong (never the value).
pub fn datetime(s: &str, default_offset: Option<&str>) -> Result<String, String> {
    convert(s, default_offset, false)
}

/// A FHIR `instant`: like [`datetime`], but a time is required.
pub fn instant(s: &str, default_offset: Option<&str>) -> Result<String, String> {
    convert(s, default_offset, true)
}

fn convert(s: &str, default_offset: Option<&str>, need_time: bool) -> Result<String, String> {
    if !is_datetime(s) {
        return Err("is not a date-time".into());
    }
    let (date, rest) = match s.split_once('T') {
        Some((d, r)) => (d, Some(r)),
        None => (s, None),
    };
    if Date::parse(date).is_none() {
        return Err("has year 0000, which FHIR does not allow".into());
    }
    let Some(rest) = rest else {
        return if need_time {
            Err("is a date without a time; FHIR needs an instant (date, time and zone)".into())
        } else {
            Ok(date.to_string())
        };
    };
    let (time, zone) = match rest.find(['Z', '+', '-']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let zone = if zone.is_empty() {
        match default_offset {
            Some(z) => z.to_string(),
            None => {
                return Err(
                    "has a time but no UTC offset, which FHIR requires; set [fhir] utc_offset"
                        .into(),
                );
            }
        }
    } else {
        parse_offset(zone).ok_or_else(|| {
            "has a UTC offset beyond ±14:00, which FHIR does not allow".to_string()
        })?
    };
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (time, None),
    };
    let hms = if hms.len() == 5 { format!("{hms}:00") } else { hms.to_string() };
    Ok(match frac {
        Some(f) => format!("{date}T{hms}.{f}{zone}"),
        None => format!("{date}T{hms}{zone}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_become_fhir() {
        let cases = [
            ("2024-03-05", "2024-03-05"),
            ("2024-03-05T08:55:00.000+0300", "2024-03-05T08:55:00.000+03:00"),
            ("2024-03-05T05:42:00Z", "2024-03-05T05:42:00Z"),
            ("2024-03-05T08:42", "2024-03-05T08:42:00+01:00"),
            ("2024-03-05T08:42:07-05:30", "2024-03-05T08:42:07-05:30"),
        ];
        for (input, want) in cases {
            assert_eq!(datetime(input, Some("+01:00")).as_deref(), Ok(want), "{input}");
        }
        assert!(datetime("2024-03-05T08:42", None).is_err());
        assert!(datetime("2024-03-05T08:42+1500", None).is_err());
        assert!(datetime("0000-01-01", None).is_err());
        assert!(datetime("yesterday", None).is_err());
        assert!(instant("2024-03-05", Some("Z")).is_err());
        assert_eq!(instant("2024-03-05T09:00Z", None).as_deref(), Ok("2024-03-05T09:00:00Z"));
    }

    #[test]
    fn dates_and_ages() {
        assert_eq!(Date::from_unix(0).to_string(), "1970-01-01");
        assert_eq!(Date::from_unix(1_709_618_400).to_string(), "2024-03-05");
        assert_eq!(Date::from_unix(951_782_400).to_string(), "2000-02-29");
        let birth = Date::parse("2019-03-06").expect("date");
        assert_eq!(birth.years_until(&Date::parse("2024-03-05").expect("date")), 4);
        assert_eq!(birth.years_until(&Date::parse("2024-03-06").expect("date")), 5);
        assert_eq!(parse_offset("+1400").as_deref(), Some("+14:00"));
        assert_eq!(parse_offset("+14:30"), None);
        assert_eq!(parse_offset("+a\u{e9}0"), None);
    }
}
