//! A small cron expression parser and matcher, in UTC.
//!
//! Five fields — `minute hour day-of-month month day-of-week` — as in crontab(5), or six
//! with a leading `second` field (as Quartz and most cron libraries accept). Each field
//! takes `*`, numbers, `a-b` ranges, `/step` on either, and comma lists; months and
//! weekdays also take names (`jan`, `mon`); weekday 7 is Sunday like 0. When both
//! day-of-month and day-of-week are restricted, a day matching either one matches (the
//! classic cron rule). `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly` and
//! `@yearly` (`@annually`) are shorthands.

use crate::util::{civil_from_days, days_from_civil};

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: Option<u64>,
    minutes: u64,
    hours: u64,
    dom: u64,
    months: u64,
    dow: u64,
    dom_any: bool,
    dow_any: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Spec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The first name stands for this number.
    names_from: u32,
}

const SECOND: Spec = Spec {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const MINUTE: Spec = Spec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const HOUR: Spec = Spec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    names_from: 0,
};
const DOM: Spec = Spec {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
    names_from: 0,
};
const MONTH: Spec = Spec {
    name: "month",
    min: 1,
    max: 12,
    names: &MONTHS,
    names_from: 1,
};
const DOW: Spec = Spec {
    name: "day of week",
    // 7 is accepted as Sunday and folded onto 0.
    min: 0,
    max: 7,
    names: &DAYS,
    names_from: 0,
};

fn value(spec: &Spec, s: &str) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = spec.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + spec.names_from);
    }
    let v: u32 = s
        .parse()
        .map_err(|_| format!("{}: '{s}' is not a number", spec.name))?;
    if v < spec.min || v > spec.max {
        return Err(format!(
            "{}: {v} is outside {}-{}",
            spec.name, spec.min, spec.max
        ));
    }
    Ok(v)
}

/// Parses one field into a bit set; `true` when it is an unrestricted `*`.
fn field(spec: &Spec, text: &str) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("{}: step '{s}' must be a number ≥ 1", spec.name))?;
                (r, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (spec.min, spec.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(spec, a)?, value(spec, b)?);
            if a > b {
                return Err(format!("{}: range {a}-{b} runs backwards", spec.name));
            }
            (a, b)
        } else if range.is_empty() {
            return Err(format!("{}: empty item in '{text}'", spec.name));
        } else {
            let a = value(spec, range)?;
            // `a/step` means from a to the end.
            (a, if item.contains('/') { spec.max } else { a })
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, text == "*"))
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let t = text.trim();
        let expanded = match t {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!("unknown shorthand '{other}'"));
            }
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let (sec, rest) = match parts.len() {
            5 => (None, &parts[..]),
            6 => (Some(parts[0]), &parts[1..]),
            n => {
                return Err(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week) or 6 \
                     (with a leading second), got {n}"
                ));
            }
        };
        let seconds = sec.map(|s| field(&SECOND, s)).transpose()?.map(|(b, _)| b);
        let (minutes, _) = field(&MINUTE, rest[0])?;
        let (hours, _) = field(&HOUR, rest[1])?;
        let (dom, dom_any) = field(&DOM, rest[2])?;
        let (months, _) = field(&MONTH, rest[3])?;
        let (mut dow, dow_any) = field(&DOW, rest[4])?;
        if dow & (1 << 7) != 0 {
            dow = (dow & !(1 << 7)) | 1;
        }
        Ok(Cron {
            seconds,
            minutes,
            hours,
            dom,
            months,
            dow,
            // crontab(5): a field starting with `*` does not take part in the OR rule.
            dom_any: dom_any || rest[2].starts_with('*'),
            dow_any: dow_any || rest[4].starts_with('*'),
        })
    }

    /// Whether the expression has a seconds field (else it fires at second 0).
    pub fn has_seconds(&self) -> bool {
        self.seconds.is_some()
    }

    fn day_matches(&self, dom: u32, dow: u32) -> bool {
        let d = self.dom & (1 << dom) != 0;
        let w = self.dow & (1 << dow) != 0;
        match (self.dom_any, self.dow_any) {
            (true, true) => true,
            (true, false) => w,
            (false, true) => d,
            (false, false) => d || w,
        }
    }

    /// Whether the UTC second `t` (epoch seconds) is a firing time.
    pub fn matches(&self, t: i64) -> bool {
        let f = Fields::of(t);
        let sec_ok = match self.seconds {
            Some(s) => s & (1 << f.second) != 0,
            None => f.second == 0,
        };
        sec_ok
            && self.minutes & (1 << f.minute) != 0
            && self.hours & (1 << f.hour) != 0
            && self.months & (1 << f.month) != 0
            && self.day_matches(f.day, f.weekday)
    }

    /// The newest firing time in `(after, until]`, looking back at most one day.
    pub fn latest_in(&self, after: i64, until: i64) -> Option<i64> {
        let floor = after.max(until - 86_400);
        let step = if self.has_seconds() { 1 } else { 60 };
        let mut t = if self.has_seconds() {
            until
        } else {
            until - until.rem_euclid(60)
        };
        while t > floor {
            if self.matches(t) {
                return Some(t);
            }
            t -= step;
        }
        None
    }

    /// The first firing time after `t`, within about five years.
    pub fn next_after(&self, t: i64) -> Option<i64> {
        let mut t = if self.has_seconds() {
            t + 1
        } else {
            t - t.rem_euclid(60) + 60
        };
        let end = t + 5 * 366 * 86_400;
        while t < end {
            let f = Fields::of(t);
            if self.months & (1 << f.month) == 0 {
                let (y, m) = if f.month == 12 {
                    (f.year + 1, 1)
                } else {
                    (f.year, f.month + 1)
                };
                t = days_from_civil(y, m, 1) * 86_400;
                continue;
            }
            if !self.day_matches(f.day, f.weekday) {
                t = (t.div_euclid(86_400) + 1) * 86_400;
                continue;
            }
            if self.hours & (1 << f.hour) == 0 {
                t = (t.div_euclid(3600) + 1) * 3600;
                continue;
            }
            if self.minutes & (1 << f.minute) == 0 {
                t = (t.div_euclid(60) + 1) * 60;
                continue;
            }
            if self.matches(t) {
                return Some(t);
            }
            t += 1;
        }
        None
    }
}

struct Fields {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday.
    weekday: u32,
}

impl Fields {
    fn of(t: i64) -> Fields {
        let days = t.div_euclid(86_400);
        let rem = t.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Fields {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: ((rem % 3600) / 60) as u32,
            second: (rem % 60) as u32,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epoch seconds of a UTC time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64) -> i64 {
        days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s
    }

    #[test]
    fn parses_fields_lists_ranges_steps_and_names() {
        let c = Cron::parse("*/15 9-17 * * mon-fri").unwrap();
        // Monday 2026-11-30 09:45:00 UTC.
        assert!(c.matches(at(2026, 11, 30, 9, 45, 0)));
        assert!(!c.matches(at(2026, 11, 30, 9, 46, 0)));
        assert!(!c.matches(at(2026, 11, 30, 9, 45, 1)), "second 0 only");
        assert!(!c.matches(at(2026, 11, 30, 18, 0, 0)));
        // Sunday 2026-11-29.
        assert!(!c.matches(at(2026, 11, 29, 10, 0, 0)));
        let c = Cron::parse("0 0 1,15 jan,jul *").unwrap();
        assert!(c.matches(at(2027, 7, 15, 0, 0, 0)));
        assert!(!c.matches(at(2027, 8, 15, 0, 0, 0)));
        let c = Cron::parse("5/20 * * * *").unwrap();
        assert!(c.matches(at(2026, 1, 1, 3, 45, 0)));
        assert!(!c.matches(at(2026, 1, 1, 3, 0, 0)));
        // Sunday as 7.
        let c = Cron::parse("0 12 * * 7").unwrap();
        assert!(c.matches(at(2026, 11, 29, 12, 0, 0)));
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        let c = Cron::parse("0 0 13 * fri").unwrap();
        // Friday 2026-11-27 (not the 13th) and Sunday 2026-12-13 (not a Friday).
        assert!(c.matches(at(2026, 11, 27, 0, 0, 0)));
        assert!(c.matches(at(2026, 12, 13, 0, 0, 0)));
        assert!(!c.matches(at(2026, 12, 14, 0, 0, 0)));
        // With a `*` day of week only the day of month counts.
        let c = Cron::parse("0 0 13 * *").unwrap();
        assert!(!c.matches(at(2026, 11, 27, 0, 0, 0)));
    }

    #[test]
    fn six_fields_have_seconds() {
        let c = Cron::parse("*/10 * * * * *").unwrap();
        assert!(c.has_seconds());
        assert!(c.matches(at(2026, 1, 1, 0, 0, 20)));
        assert!(!c.matches(at(2026, 1, 1, 0, 0, 21)));
    }

    #[test]
    fn shorthands() {
        assert_eq!(
            Cron::parse("@daily").unwrap(),
            Cron::parse("0 0 * * *").unwrap()
        );
        assert!(
            Cron::parse("@hourly")
                .unwrap()
                .matches(at(2026, 5, 5, 7, 0, 0))
        );
    }

    #[test]
    fn refuses_bad_expressions_saying_why() {
        for (bad, says) in [
            ("* * * *", "expected 5 fields"),
            ("60 * * * *", "minute: 60 is outside 0-59"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("x * * * *", "not a number"),
            ("1,,2 * * * *", "empty item"),
            ("@often", "unknown shorthand"),
        ] {
            let e = Cron::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn next_and_latest() {
        let c = Cron::parse("30 4 * * *").unwrap();
        let t = at(2026, 12, 31, 5, 0, 0);
        assert_eq!(c.next_after(t), Some(at(2027, 1, 1, 4, 30, 0)));
        assert_eq!(c.latest_in(t - 3600, t), Some(at(2026, 12, 31, 4, 30, 0)));
        assert_eq!(c.latest_in(t - 60, t), None);
        // Leap day only.
        let c = Cron::parse("0 0 29 2 *").unwrap();
        assert_eq!(
            c.next_after(at(2026, 3, 1, 0, 0, 0)),
            Some(at(2028, 2, 29, 0, 0, 0))
        );
        let c = Cron::parse("*/2 * * * * *").unwrap();
        assert_eq!(
            c.next_after(at(2026, 1, 1, 0, 0, 1)),
            Some(at(2026, 1, 1, 0, 0, 2))
        );
        assert_eq!(
            c.latest_in(at(2026, 1, 1, 0, 0, 0), at(2026, 1, 1, 0, 0, 3)),
            Some(at(2026, 1, 1, 0, 0, 2))
        );
        // The exclusive lower bound: a slot already fired is not found again.
        assert_eq!(
            c.latest_in(at(2026, 1, 1, 0, 0, 2), at(2026, 1, 1, 0, 0, 3)),
            None
        );
    }
}
