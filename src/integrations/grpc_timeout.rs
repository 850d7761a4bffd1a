//! The `grpc-timeout` header: how gRPC (and anything that adopts it, such as
//! this crate's HTTP layers) sends a deadline to the next hop.
//!
//! The [gRPC wire format] writes a timeout as 1 to 8 ASCII digits followed
//! by one unit letter: `H` (hours), `M` (minutes), `S` (seconds), `m`
//! (milliseconds), `u` (microseconds) or `n` (nanoseconds). A relative
//! timeout, not an absolute time, so clocks need not agree.
//!
//! [`parse`] accepts exactly that and nothing else: any other input
//! (9 digits, a sign, a space, an unknown unit, non-ASCII bytes, an empty
//! value) means "no deadline" and is never a panic or an overflow.
//! [`encode`] writes the finest unit whose value fits in 8 digits, rounding
//! up like grpc-go, so the receiver never sees a deadline earlier than the
//! sender's.
//!
//! [gRPC wire format]: https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

/// The header's name, `grpc-timeout`.
///
/// ```
/// let mut headers = http::HeaderMap::new();
/// headers.insert(ctxtree::integrations::grpc_timeout::GRPC_TIMEOUT,
///                http::HeaderValue::from_static("50m"));
/// assert!(headers.contains_key("grpc-timeout"));
/// ```
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The largest value the format allows: 8 digits.
const MAX_VALUE: u64 = 99_999_999;

/// Units from the finest to the coarsest, with their length in nanoseconds.
const UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60 * 1_000_000_000),
    (b'H', 3_600 * 1_000_000_000),
];

/// Parses a `grpc-timeout` value (`"50m"`, `"1S"`, `"100u"`, …).
///
/// Returns `None` for anything that is not 1–8 ASCII digits followed by one
/// of `H M S m u n`. The largest value, `99999999H`, is about 11,400 years
/// and fits a [`Duration`]: parsing never overflows.
///
/// Go equivalent: grpc-go's `decodeTimeout` (internal).
///
/// ```
/// use std::time::Duration;
/// use ctxtree::integrations::grpc_timeout::parse;
///
/// assert_eq!(parse(b"50m"), Some(Duration::from_millis(50)));
/// assert_eq!(parse(b"2H"), Some(Duration::from_secs(7200)));
/// for bad in [&b"999999999S"[..], b"-1m", b"10x", b"", "5\u{b5}".as_bytes()] {
///     assert_eq!(parse(bad), None);
/// }
/// ```
pub fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits: fits in a u64 with room to spare.
    let n = digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3_600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes `timeout` as a `grpc-timeout` value: the finest unit whose value,
/// rounded up, fits in 8 digits (grpc-go does the same). Timeouts longer
/// than `99999999H` are written as `99999999H`.
///
/// Round trip: `parse(encode(t))` is never shorter than `t`, and is `t`
/// exactly whenever `t` is a whole number of the chosen unit.
///
/// ```
/// use std::time::Duration;
/// use ctxtree::integrations::grpc_timeout::{encode, parse};
///
/// assert_eq!(encode(Duration::from_millis(50)), "50000000n");
/// assert_eq!(encode(Duration::from_secs(30)), "30000000u");
/// assert_eq!(encode(Duration::from_secs(3600)), "3600000m");
/// let t = Duration::from_nanos(123_456_789_123);
/// assert!(parse(encode(t).as_bytes()).unwrap() >= t);
/// ```
pub fn encode(timeout: Duration) -> HeaderValue {
    let nanos = timeout.as_nanos();
    for (unit, len) in UNITS {
        let value = nanos.div_ceil(u128::from(len));
        if value <= u128::from(MAX_VALUE) {
            return header_value(value as u64, unit);
        }
    }
    header_value(MAX_VALUE, b'H')
}

fn header_value(value: u64, unit: u8) -> HeaderValue {
    let mut buf = [0u8; 9];
    let mut start = 8;
    let mut v = value;
    loop {
        start -= 1;
        buf[start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf[8] = unit;
    // Digits and an ASCII letter: always a valid header value.
    HeaderValue::from_bytes(&buf[start..]).unwrap_or_else(|_| HeaderValue::from_static("0n"))
}

/// What the `grpc-timeout` header of a request says.
///
/// ```
/// use std::time::Duration;
/// use ctxtree::integrations::grpc_timeout::{from_headers, Header};
///
/// let mut headers = http::HeaderMap::new();
/// assert_eq!(from_headers(&headers), Header::Absent);
/// headers.insert("grpc-timeout", "1S".parse().unwrap());
/// assert_eq!(from_headers(&headers), Header::Timeout(Duration::from_secs(1)));
/// headers.insert("grpc-timeout", "-1m".parse().unwrap());
/// assert_eq!(from_headers(&headers), Header::Malformed);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// No `grpc-timeout` header.
    Absent,
    /// A well-formed timeout.
    Timeout(Duration),
    /// A header that [`parse`] rejects: treated as absent, and counted by
    /// the server layer.
    Malformed,
}

impl Header {
    /// The timeout, if the header held a well-formed one.
    ///
    /// ```
    /// use ctxtree::integrations::grpc_timeout::Header;
    /// assert_eq!(Header::Malformed.timeout(), None);
    /// ```
    pub fn timeout(self) -> Option<Duration> {
        match self {
            Header::Timeout(t) => Some(t),
            _ => None,
        }
    }
}

/// Reads the first `grpc-timeout` header of `headers`.
///
/// ```
/// use ctxtree::integrations::grpc_timeout::{from_headers, Header};
/// let mut headers = http::HeaderMap::new();
/// headers.insert("grpc-timeout", "10x".parse().unwrap());
/// assert_eq!(from_headers(&headers), Header::Malformed);
/// ```
pub fn from_headers(headers: &HeaderMap) -> Header {
    match headers.get(GRPC_TIMEOUT) {
        None => Header::Absent,
        Some(v) => parse(v.as_bytes()).map_or(Header::Malformed, Header::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(t: Duration) -> String {
        encode(t).to_str().unwrap().to_owned()
    }

    #[test]
    fn examples() {
        assert_eq!(parse(b"0n"), Some(Duration::ZERO));
        assert_eq!(parse(b"00000001S"), Some(Duration::from_secs(1)));
        assert_eq!(
            parse(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(parse(b"123456789n"), None);
        assert_eq!(parse(b"1"), None);
        assert_eq!(parse(b"S"), None);
        assert_eq!(parse(b" 1S"), None);
        assert_eq!(parse(b"1S "), None);
        assert_eq!(parse(b"+1S"), None);
        assert_eq!(parse(b"1s"), None);
        assert_eq!(enc(Duration::ZERO), "0n");
        assert_eq!(enc(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(enc(Duration::from_nanos(100_000_000)), "100000u");
        assert_eq!(enc(Duration::from_nanos(100_000_001)), "100001u");
        assert_eq!(enc(Duration::MAX), "99999999H");
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn encode_then_parse_rounds_up_by_less_than_one_unit(
            // Everything below the largest encodable value, 99999999H.
            secs in 0u64..MAX_VALUE * 3_600, nanos in 0u32..1_000_000_000
        ) {
            let t = Duration::new(secs, nanos);
            let v = encode(t);
            let s = v.as_bytes();
            prop_assert!(s.len() >= 2 && s.len() <= 9);
            let back = parse(s).expect("encode writes a parseable value");
            prop_assert!(back >= t);
            let unit = UNITS.iter().find(|u| u.0 == s[s.len() - 1]).unwrap().1;
            prop_assert!(back.as_nanos() - t.as_nanos() < u128::from(unit));
            // The finest unit was chosen: one finer would not fit 8 digits.
            if let Some(pos) = UNITS.iter().position(|u| u.0 == s[s.len() - 1]) {
                if pos > 0 {
                    let finer = UNITS[pos - 1].1;
                    prop_assert!(t.as_nanos().div_ceil(u128::from(finer)) > u128::from(MAX_VALUE));
                }
            }
        }

        #[test]
        fn longer_than_the_format_clamps(extra in 1u64..u64::MAX / 2) {
            let t = Duration::from_secs(MAX_VALUE * 3_600).saturating_add(Duration::from_nanos(extra));
            prop_assert_eq!(enc(t), "99999999H");
        }

        #[test]
        fn parse_then_encode_is_exact(value in 0u64..=MAX_VALUE, unit in 0usize..6) {
            let text = format!("{value}{}", UNITS[unit].0 as char);
            let t = parse(text.as_bytes()).unwrap();
            prop_assert_eq!(parse(encode(t).as_bytes()), Some(t));
        }
    }
}
