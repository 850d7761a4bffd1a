//! [`DeadlineHeader`]: which request headers carry a deadline, and how —
//! gRPC's `grpc-timeout`, Connect's `Connect-Timeout-Ms`, a proxy's
//! `x-envoy-expected-rq-timeout-ms`, or any header holding an integer
//! count of a unit — and the set of them a layer uses: built the same way
//! by both layers, read by the server layer ([`read_all`]), written by the
//! client layer ([`write_all`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::integrations::grpc_timeout;

/// How a header's value encodes a timeout.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    /// gRPC: 1–8 digits and a unit letter.
    Grpc,
    /// 1 to `max_digits` ASCII digits, counting `unit`s.
    Integer { unit: Duration, max_digits: u8 },
}

/// A request header that carries a deadline as a relative timeout: its
/// name and its format. [`ServerLayer`](crate::integrations::ServerLayer)
/// reads the ones it is given (the request's deadline is the earliest of
/// all of them and the layer's cap); [`ClientLayer`](crate::integrations::ClientLayer)
/// writes them from the time left.
///
/// Parsing follows one rule for every format: a value that is not exactly
/// the format (a sign, a space, a fraction, too many digits, non-ASCII
/// bytes, an empty value) is *malformed*: ignored and counted by the
/// server layer, never a panic. A well-formed value too large to
/// represent means "no deadline".
///
/// | constructor | header | format |
/// |---|---|---|
/// | [`grpc`](Self::grpc) | `grpc-timeout` | 1–8 digits + `H M S m u n` (gRPC) |
/// | [`connect`](Self::connect) | `connect-timeout-ms` | 1–10 digits, milliseconds ([Connect protocol]) |
/// | [`envoy`](Self::envoy) | `x-envoy-expected-rq-timeout-ms` | digits, milliseconds (Envoy) |
/// | [`integer`](Self::integer) | any | 1–18 digits of any unit |
///
/// Go equivalent: what grpc-go and connect-go do for their own header;
/// net/http reads none, a Go proxy-aware server parses these by hand.
///
/// [Connect protocol]: https://connectrpc.com/docs/protocol/#unary-request
///
/// ```
/// use std::time::Duration;
/// use ctxtree::integrations::DeadlineHeader;
///
/// let connect = DeadlineHeader::connect();
/// assert_eq!(connect.parse(b"250"), Some(Duration::from_millis(250)));
/// assert_eq!(connect.parse(b"-1"), None);
/// assert_eq!(connect.encode(Duration::from_micros(1500)), "2"); // rounded up
///
/// let secs = DeadlineHeader::integer(http::HeaderName::from_static("x-timeout-s"), Duration::from_secs(1));
/// assert_eq!(secs.parse(b"30"), Some(Duration::from_secs(30)));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DeadlineHeader {
    name: HeaderName,
    format: Format,
}

/// What one deadline header of a request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    Absent,
    Timeout(Duration),
    /// Well-formed but too large to be a deadline.
    Unbounded,
    Malformed,
}

impl DeadlineHeader {
    /// gRPC's `grpc-timeout` (see [`grpc_timeout`]). The default of both
    /// layers.
    ///
    /// ```
    /// let h = ctxtree::integrations::DeadlineHeader::grpc();
    /// assert_eq!(h.name(), "grpc-timeout");
    /// assert_eq!(h.parse(b"50m"), Some(std::time::Duration::from_millis(50)));
    /// ```
    pub fn grpc() -> DeadlineHeader {
        DeadlineHeader {
            name: grpc_timeout::GRPC_TIMEOUT,
            format: Format::Grpc,
        }
    }

    /// The Connect protocol's `Connect-Timeout-Ms`: 1 to 10 ASCII digits,
    /// milliseconds.
    ///
    /// ```
    /// let h = ctxtree::integrations::DeadlineHeader::connect();
    /// assert_eq!(h.name(), "connect-timeout-ms");
    /// assert_eq!(h.parse(b"12345678901"), None); // 11 digits
    /// ```
    pub fn connect() -> DeadlineHeader {
        DeadlineHeader {
            name: HeaderName::from_static("connect-timeout-ms"),
            format: Format::Integer {
                unit: Duration::from_millis(1),
                max_digits: 10,
            },
        }
    }

    /// Envoy's `x-envoy-expected-rq-timeout-ms`, the budget the proxy
    /// gives the upstream: ASCII digits (at most 18), milliseconds.
    ///
    /// ```
    /// let h = ctxtree::integrations::DeadlineHeader::envoy();
    /// assert_eq!(h.parse(b"15000"), Some(std::time::Duration::from_secs(15)));
    /// ```
    pub fn envoy() -> DeadlineHeader {
        DeadlineHeader::integer(
            HeaderName::from_static("x-envoy-expected-rq-timeout-ms"),
            Duration::from_millis(1),
        )
    }

    /// Any header whose value is 1 to 18 ASCII digits counting `unit`s
    /// (a zero `unit` is taken as one nanosecond).
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxtree::integrations::DeadlineHeader;
    /// let h = DeadlineHeader::integer(http::HeaderName::from_static("x-budget-us"), Duration::from_micros(1));
    /// assert_eq!(h.parse(b"1500"), Some(Duration::from_micros(1500)));
    /// assert_eq!(h.parse(b"1.5"), None);
    /// ```
    pub fn integer(name: HeaderName, unit: Duration) -> DeadlineHeader {
        DeadlineHeader {
            name,
            format: Format::Integer {
                unit: unit.max(Duration::from_nanos(1)),
                max_digits: 18,
            },
        }
    }

    /// The header's name.
    ///
    /// ```
    /// assert_eq!(ctxtree::integrations::DeadlineHeader::envoy().name(), "x-envoy-expected-rq-timeout-ms");
    /// ```
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// Parses one value of this header: `None` if it is malformed or too
    /// large to be a deadline.
    ///
    /// ```
    /// let h = ctxtree::integrations::DeadlineHeader::connect();
    /// for bad in [&b""[..], b" 1", b"1 ", b"+1", b"1e3", "\u{665}".as_bytes()] {
    ///     assert_eq!(h.parse(bad), None);
    /// }
    /// ```
    pub fn parse(&self, value: &[u8]) -> Option<Duration> {
        match self.read_value(value) {
            Reading::Timeout(t) => Some(t),
            _ => None,
        }
    }

    fn read_value(&self, value: &[u8]) -> Reading {
        match self.format {
            Format::Grpc => match grpc_timeout::parse(value) {
                Some(t) => Reading::Timeout(t),
                None => Reading::Malformed,
            },
            Format::Integer { unit, max_digits } => {
                if value.is_empty()
                    || value.len() > usize::from(max_digits)
                    || !value.iter().all(u8::is_ascii_digit)
                {
                    return Reading::Malformed;
                }
                // At most 18 digits: fits a u64.
                let n = value
                    .iter()
                    .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
                match from_nanos_u128(u128::from(n) * unit.as_nanos()) {
                    Some(t) => Reading::Timeout(t),
                    None => Reading::Unbounded,
                }
            }
        }
    }

    /// Reads this header from `headers` (the first value).
    pub(crate) fn read(&self, headers: &HeaderMap) -> Reading {
        match headers.get(&self.name) {
            None => Reading::Absent,
            Some(v) => self.read_value(v.as_bytes()),
        }
    }

    /// Encodes `timeout` for this header, rounded up to the unit so the
    /// receiver never sees a deadline earlier than the sender's; clamped
    /// to the largest value the format allows.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxtree::integrations::DeadlineHeader;
    /// assert_eq!(DeadlineHeader::grpc().encode(Duration::from_millis(50)), "50000000n");
    /// assert_eq!(DeadlineHeader::connect().encode(Duration::from_secs(2)), "2000");
    /// assert_eq!(DeadlineHeader::connect().encode(Duration::MAX), "9999999999");
    /// ```
    pub fn encode(&self, timeout: Duration) -> HeaderValue {
        match self.format {
            Format::Grpc => grpc_timeout::encode(timeout),
            Format::Integer { unit, max_digits } => {
                let max = 10u128.pow(u32::from(max_digits)) - 1;
                let n = timeout.as_nanos().div_ceil(unit.as_nanos()).min(max);
                HeaderValue::from(n as u64)
            }
        }
    }
}

fn from_nanos_u128(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

impl fmt::Debug for DeadlineHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("DeadlineHeader");
        d.field("name", &self.name);
        match self.format {
            Format::Grpc => d.field("format", &"grpc-timeout"),
            Format::Integer { unit, max_digits } => {
                d.field("unit", &unit).field("max_digits", &max_digits)
            }
        };
        d.finish()
    }
}

/// What all of a request's deadline headers say together.
#[derive(Debug, Default)]
pub(crate) struct Combined {
    /// The earliest well-formed timeout.
    pub(crate) timeout: Option<Duration>,
    /// How many headers were malformed.
    pub(crate) malformed: u32,
    /// Whether the `grpc-timeout` header was among the malformed.
    pub(crate) grpc_malformed: bool,
}

/// The set both layers start with: `grpc-timeout` alone.
pub(crate) fn default_set() -> Arc<[DeadlineHeader]> {
    Arc::from([DeadlineHeader::grpc()])
}

/// `set` with `header` added at the end, replacing a header of the same
/// name.
pub(crate) fn with_header(set: &[DeadlineHeader], header: DeadlineHeader) -> Arc<[DeadlineHeader]> {
    let mut out: Vec<DeadlineHeader> = set
        .iter()
        .filter(|h| h.name() != header.name())
        .cloned()
        .collect();
    out.push(header);
    out.into()
}

/// Writes the time `left` into every header of `set`, keeping a value
/// already in `headers` that parses and is no larger.
pub(crate) fn write_all(set: &[DeadlineHeader], headers: &mut HeaderMap, left: Duration) {
    for h in set {
        let keep = headers
            .get(h.name())
            .and_then(|v| h.parse(v.as_bytes()))
            .is_some_and(|existing| existing <= left);
        if !keep {
            headers.insert(h.name().clone(), h.encode(left));
        }
    }
}

/// Reads every header of `set` from `headers`: the earliest timeout wins.
pub(crate) fn read_all(set: &[DeadlineHeader], headers: &HeaderMap) -> Combined {
    let mut out = Combined::default();
    for h in set {
        match h.read(headers) {
            Reading::Absent | Reading::Unbounded => {}
            Reading::Timeout(t) => {
                out.timeout = Some(out.timeout.map_or(t, |e| e.min(t)));
            }
            Reading::Malformed => {
                out.malformed += 1;
                out.grpc_malformed |= h.format == Format::Grpc;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn integer_formats() {
        let c = DeadlineHeader::connect();
        assert_eq!(c.parse(b"0"), Some(Duration::ZERO));
        assert_eq!(
            c.parse(b"9999999999"),
            Some(Duration::from_millis(9_999_999_999))
        );
        assert_eq!(c.read_value(b"99999999999"), Reading::Malformed);
        let e = DeadlineHeader::envoy();
        assert_eq!(
            e.read_value(b"999999999999999999"),
            Reading::Timeout(Duration::from_millis(999_999_999_999_999_999))
        );
        let h = DeadlineHeader::integer(HeaderName::from_static("x-h"), Duration::from_secs(3600));
        // 18 digits of hours do not fit a Duration: no deadline, not malformed.
        assert_eq!(h.read_value(b"999999999999999999"), Reading::Unbounded);
        assert_eq!(h.encode(Duration::MAX), "5124095576030432");
        let ns = DeadlineHeader::integer(HeaderName::from_static("x-ns"), Duration::ZERO);
        assert_eq!(ns.encode(Duration::MAX), "999999999999999999"); // clamped
        assert_eq!(ns.parse(b"7"), Some(Duration::from_nanos(7)));
        assert_eq!(h.encode(Duration::from_secs(1)), "1");
        assert_eq!(h.encode(Duration::ZERO), "0");
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..24), unit in 1u64..u64::MAX) {
            let h = DeadlineHeader::integer(HeaderName::from_static("x-h"), Duration::from_nanos(unit));
            let _ = h.read_value(&bytes);
            let _ = DeadlineHeader::connect().parse(&bytes);
        }

        #[test]
        fn encode_then_parse_never_shortens(ms in 0u64..9_999_999_999, extra_ns in 0u32..1_000_000) {
            let t = Duration::from_millis(ms) + Duration::from_nanos(u64::from(extra_ns));
            let c = DeadlineHeader::connect();
            let back = c.parse(c.encode(t).as_bytes()).unwrap();
            prop_assert!(back >= t);
            prop_assert!(back - t < Duration::from_millis(1));
        }
    }
}
