//! Deadlines of a run: the run's start instant, the deadline each
//! `DeadlineArg` asks for, and deadlines known up to an interval (those
//! computed from `Instant::now()` inside the library call).

use std::time::{Duration, Instant};

use ctxtree::{CancelHandle, Context};

use super::ops::DeadlineArg;
use super::probes::Tag;

/// Deadlines of one run, from its start instant.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) base: Instant,
}

/// A deadline known up to the interval of the call that computed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dl {
    pub(crate) lo: Instant,
    pub(crate) hi: Instant,
}

impl Dl {
    pub(crate) fn exact(t: Instant) -> Dl {
        Dl { lo: t, hi: t }
    }
    pub(crate) fn contains(&self, t: Instant) -> bool {
        self.lo <= t && t <= self.hi
    }
    /// `self < other`, which the construction of the runs always decides.
    pub(crate) fn less(&self, other: &Dl) -> bool {
        if self.hi < other.lo {
            true
        } else if self.lo >= other.hi {
            false
        } else {
            panic!("model ambiguity: deadlines {self:?} and {other:?} overlap")
        }
    }
    pub(crate) fn min(a: Option<Dl>, b: Option<Dl>) -> Option<Dl> {
        match (a, b) {
            (Some(a), Some(b)) if a == b => Some(a),
            (Some(a), Some(b)) => Some(if a.less(&b) { a } else { b }),
            (x, y) => x.or(y),
        }
    }
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            base: Instant::now(),
        }
    }

    /// Calls the library's deadline constructor for `arg` and returns the
    /// new context, its handle and the deadline asked for (an interval for
    /// the `now`-relative ones; `None` when unrepresentable).
    pub(crate) fn derive(
        &self,
        parent: &Context,
        arg: DeadlineArg,
        cause: Option<Tag>,
    ) -> (Context, CancelHandle, Option<Dl>, bool) {
        let abs = |t: Instant| {
            let (c, h) = match cause {
                Some(tag) => parent.with_deadline_cause(t, tag),
                None => parent.with_deadline(t),
            };
            (c, h, Some(Dl::exact(t)))
        };
        let rel = |d: Duration| {
            let lo = Instant::now();
            let (c, h) = match cause {
                Some(tag) => parent.with_timeout_cause(d, tag),
                None => parent.with_timeout(d),
            };
            let hi = Instant::now();
            let dl = lo.checked_add(d).map(|lo| Dl {
                lo,
                hi: hi.checked_add(d).unwrap_or(lo),
            });
            (c, h, dl)
        };
        let secs = Duration::from_secs;
        let (c, h, dl) = match arg {
            DeadlineArg::ZeroTimeout => rel(Duration::ZERO),
            DeadlineArg::Past(k) => abs(self
                .base
                .checked_sub(secs(1 + u64::from(k)))
                .unwrap_or(self.base)),
            DeadlineArg::AtBase => abs(self.base),
            DeadlineArg::MaxTimeout => {
                let (c, h) = match cause {
                    Some(tag) => parent.with_timeout_cause(Duration::MAX, tag),
                    None => parent.with_timeout(Duration::MAX),
                };
                (c, h, None)
            }
            DeadlineArg::Huge => abs(self.base + secs(100 * 365 * 86_400)),
            DeadlineArg::Extreme => abs(self
                .base
                .checked_add(secs(i64::MAX as u64 / 2))
                .unwrap_or(self.base + secs(1 << 40))),
            DeadlineArg::Far(k) => abs(self.base + secs(3600 + u64::from(k))),
            DeadlineArg::FarTimeout => rel(secs(1_000_000)),
        };
        let expired = matches!(
            arg,
            DeadlineArg::ZeroTimeout | DeadlineArg::Past(_) | DeadlineArg::AtBase
        );
        (c, h, dl, expired)
    }
}
