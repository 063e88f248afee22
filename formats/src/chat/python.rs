//! Python's text forms of values, as chat templates see them under transformers: `json.dumps`
//! (the `tojson` filter), `repr(float)` (how Jinja prints a float) and `datetime.strftime`
//! (`strftime_now`).

use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// The `tojson` filter as transformers defines it:
/// `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, arguments
/// by position or by name. Unlike Jinja's own filter it escapes no HTML characters.
pub(super) fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<String, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let mut opts: [Value; 4] = Default::default();
    for (i, name) in NAMES.iter().enumerate() {
        if let Some(v) = args.get(i) {
            if kwargs.has(name) {
                return Err(invalid(format!("tojson got multiple values for {name}")));
            }
            opts[i] = v.clone();
        } else if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            opts[i] = v;
        }
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = opts;
    let indent = match indent.kind() {
        ValueKind::Undefined | ValueKind::None => None,
        ValueKind::String => Some(indent.as_str().unwrap_or_default().to_string()),
        ValueKind::Number if indent.is_integer() => {
            // Python has no upper bound; 64 keeps `indent × depth` small before fuel sees it.
            let n = indent.as_i64().unwrap_or(0).clamp(0, 64);
            Some(" ".repeat(n as usize))
        }
        _ => return Err(invalid("tojson: indent must be an integer or a string")),
    };
    let (item_sep, key_sep) = match separators.kind() {
        ValueKind::Undefined | ValueKind::None if indent.is_some() => (",".into(), ": ".into()),
        ValueKind::Undefined | ValueKind::None => (", ".into(), ": ".into()),
        _ => {
            let both: Vec<Value> = separators.try_iter()?.collect();
            match both.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_string(),
                    b.as_str().unwrap_or_default().to_string(),
                ),
                _ => return Err(invalid("tojson: separators must be two strings")),
            }
        }
    };
    let mut w = JsonWriter {
        out: String::new(),
        ensure_ascii: ensure_ascii.is_true(),
        sort_keys: sort_keys.is_true(),
        indent,
        item_sep,
        key_sep,
        depth: 0,
    };
    w.value(value)?;
    Ok(w.out)
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// Deeper values are refused (Python's own limit is its recursion limit, about 1000).
const MAX_JSON_DEPTH: usize = 128;

struct JsonWriter {
    out: String,
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    depth: usize,
}

impl JsonWriter {
    fn value(&mut self, v: &Value) -> Result<(), Error> {
        match v.kind() {
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.out.push_str(&number_repr(v, true)),
            ValueKind::String => self.string(v.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container('[', ']', items.len(), |w, i| w.value(&items[i]))?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for k in v.try_iter()? {
                    let item = v.get_item(&k)?;
                    entries.push((key_string(&k)?, item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container('{', '}', entries.len(), |w, i| {
                    w.string(&entries[i].0);
                    w.out.push_str(&w.key_sep.clone());
                    w.value(&entries[i].1)
                })?;
            }
            other => {
                return Err(invalid(format!(
                    "Object of type {other} is not JSON serializable"
                )));
            }
        }
        Ok(())
    }

    /// `open item (sep item)* close`, with Python's newline and indent after `open` and each
    /// separator when `indent` is set; empty containers are `[]` and `{}` either way.
    fn container(
        &mut self,
        open: char,
        close: char,
        n: usize,
        mut item: impl FnMut(&mut Self, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.out.push(open);
        if n == 0 {
            self.out.push(close);
            return Ok(());
        }
        self.depth += 1;
        if self.depth > MAX_JSON_DEPTH {
            return Err(invalid("tojson: value nested too deeply"));
        }
        for i in 0..n {
            if i > 0 {
                self.out.push_str(&self.item_sep.clone());
            }
            self.newline();
            item(self, i)?;
        }
        self.depth -= 1;
        self.newline();
        self.out.push(close);
        Ok(())
    }

    fn newline(&mut self) {
        if let Some(unit) = &self.indent {
            self.out.push('\n');
            for _ in 0..self.depth {
                self.out.push_str(unit);
            }
        }
    }

    /// Python's `encode_basestring` (and `encode_basestring_ascii` under `ensure_ascii`).
    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !(' '..='~').contains(&c)) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        self.out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

/// A map key as `json.dumps` writes it: strings as they are, numbers, booleans and None in their
/// JSON form.
fn key_string(k: &Value) -> Result<String, Error> {
    Ok(match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_string(),
        ValueKind::Number => number_repr(k, true),
        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).into(),
        ValueKind::None => "null".into(),
        other => {
            return Err(invalid(format!(
                "keys must be str, int, float, bool or None, not {other}"
            )));
        }
    })
}

/// An integer in decimal, a float as Python's `repr` (`1.0`, `1e-05`, `1.5e+16`); non-finite
/// floats as JSON writes them (`NaN`, `Infinity`) or as `str` does (`nan`, `inf`).
pub(super) fn number_repr(v: &Value, json: bool) -> String {
    if v.is_integer() {
        return v.to_string();
    }
    let x = f64::try_from(v.clone()).unwrap_or(f64::NAN);
    match (x.is_nan(), x.is_infinite(), json) {
        (true, _, true) => "NaN".into(),
        (true, _, false) => "nan".into(),
        (_, true, true) => (if x > 0.0 { "Infinity" } else { "-Infinity" }).into(),
        (_, true, false) => (if x > 0.0 { "inf" } else { "-inf" }).into(),
        _ => float_repr(x),
    }
}

/// Python's `repr` of a finite float: the shortest digits that round-trip (Rust's `{:e}` finds
/// the same ones), in fixed notation for decimal exponents -4..16 and scientific outside.
pub(super) fn float_repr(x: f64) -> String {
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            let zeros = "0".repeat((-point) as usize);
            format!("{sign}0.{zeros}{digits}")
        } else if digits.len() <= point as usize {
            let zeros = "0".repeat(point as usize - digits.len());
            format!("{sign}{digits}{zeros}.0")
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// `datetime.strftime(format)` for the UTC time `unix_secs` seconds after the epoch, in the C
/// locale. Directives: `%a %A %b %B %c %d %e %H %I %j %m %M %p %S %x %X %y %Y %%`, and glibc's `%-d`,
/// `%-m`, `%-H`, `%-I`, `%-M`, `%-S`, `%-j` without padding; any other is written as it stands
/// (as glibc does).
pub(super) fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3)
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.peek() == Some(&'-');
        if unpadded {
            chars.next();
        }
        let num = |n: i64, width: usize| {
            if unpadded {
                n.to_string()
            } else {
                format!("{n:0width$}")
            }
        };
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let text = match d {
            'a' => DAYS[weekday][..3].to_string(),
            'A' => DAYS[weekday].to_string(),
            'c' => strftime("%a %b %e %H:%M:%S %Y", unix_secs),
            'x' => strftime("%m/%d/%y", unix_secs),
            'X' => strftime("%H:%M:%S", unix_secs),
            'b' | 'h' => MONTHS[month as usize - 1][..3].to_string(),
            'B' => MONTHS[month as usize - 1].to_string(),
            'd' => num(day, 2),
            'e' => format!("{day:2}"),
            'H' => num(hour, 2),
            'I' => num(hour12, 2),
            'j' => num(yday, 3),
            'm' => num(month, 2),
            'M' => num(minute, 2),
            'p' => (if hour < 12 { "AM" } else { "PM" }).to_string(),
            'S' => num(second, 2),
            'y' => num(year.rem_euclid(100), 2),
            'Y' => year.to_string(),
            '%' => "%".to_string(),
            other if unpadded => format!("%-{other}"),
            other => format!("%{other}"),
        };
        out.push_str(&text);
    }
    out
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    // Python 3: repr(x) for each.
    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (123456.789, "123456.789"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (2.5e-300, "2.5e-300"),
            (1e100, "1e+100"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn calendar_round_trips() {
        for d in [-800_000, -1, 0, 59, 11_016, 19_782, 2_932_896] {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, day), d);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
