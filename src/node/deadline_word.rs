//! The movable deadline of a deadline node: one atomic word
//! (`DeadlineNode::deadline`), and the only place that converts between
//! `Instant`s and words.
//!
//! A word is the deadline in nanoseconds since [`base`], a process-wide
//! `Instant` set about 34 years before the first use (so that any instant a
//! program can reasonably name is later than it), in the low 63 bits, or
//! [`NEVER`] there; bit 63 ([`FIRED`]) is set once, by the timer's claim
//! (a CAS, so a move racing the expiry has one winner), and never cleared.
//! The low 63 bits cover about 292 years from the base: a later instant is
//! "never" (see [`encode`]).
//!
//! Movers ([`DeadlineWord::try_move`]) and the claim
//! ([`DeadlineWord::claim`]) only ever CAS the word, so each move is
//! ordered before or after the claim: a move that wins keeps the context
//! from firing before its new deadline (the claim re-reads the word and
//! re-arms instead), a move that loses sees `FIRED` and reports failure.
//! Invariant 10m in `docs/DESIGN.md`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::sync::{AtomicU64, Ordering};

/// Bit 63: the timer claimed the deadline (it fires, or fired).
pub(crate) const FIRED: u64 = 1 << 63;
/// The low 63 bits.
const TIME: u64 = FIRED - 1;
/// Low bits meaning "no deadline": never fires.
pub(crate) const NEVER: u64 = TIME;
/// How far before the first use the base lies, at most (about 34 years).
const BACK: Duration = Duration::from_secs(1 << 30);

/// The process-wide time zero of deadline words: `BACK` before the first
/// call (or as far back as the platform's `Instant` allows).
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(|| {
        let now = Instant::now();
        // Some platforms' `Instant` cannot go far before boot: halve the
        // distance until it fits.
        let mut back = BACK;
        loop {
            if let Some(b) = now.checked_sub(back) {
                return b;
            }
            if back.is_zero() {
                return now;
            }
            back /= 2;
        }
    })
}

/// The word of `at`: nanoseconds since [`base`] (0 for an instant before
/// it), or `None` if `at` lies too far ahead to be represented (about 258
/// years after the first use or more): such a deadline is "never".
pub(crate) fn encode(at: Instant) -> Option<u64> {
    let since = at.saturating_duration_since(base());
    let nanos = u64::try_from(since.as_nanos()).ok()?;
    (nanos < NEVER).then_some(nanos)
}

/// The word of `at`, [`NEVER`] if it cannot be represented.
pub(crate) fn encode_or_never(at: Option<Instant>) -> u64 {
    at.and_then(encode).unwrap_or(NEVER)
}

/// The instant of a word's time bits; `None` for [`NEVER`].
pub(crate) fn decode(word: u64) -> Option<Instant> {
    match word & TIME {
        NEVER => None,
        nanos => base().checked_add(Duration::from_nanos(nanos)),
    }
}

/// Where the timer re-arms an entry whose deadline moved to [`NEVER`]: as
/// far as the base and the platform allow (it re-arms again when it gets
/// there, centuries later).
pub(crate) fn far() -> Instant {
    let b = base();
    b.checked_add(Duration::from_nanos(NEVER - 1))
        .or_else(|| b.checked_add(Duration::from_secs(1 << 32)))
        .unwrap_or(b + Duration::from_secs(1 << 20))
}

/// What the timer's claim found ([`DeadlineWord::claim`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The deadline passed and this claim set `FIRED`: fire.
    Fire,
    /// The deadline moved later than `now`: re-arm at this word.
    Later(u64),
    /// Already claimed (not reached by the protocol: an entry is popped once).
    Already,
}

/// What a move did ([`DeadlineWord::try_move`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Moved {
    /// The deadline is now the new one, no earlier than the old: the armed
    /// entry (at the old time or earlier) stays, the claim re-arms it.
    Later,
    /// The deadline is now the new one, earlier than the old: the entry
    /// must be re-armed at once.
    Earlier,
    /// The timer claimed the deadline first: nothing changed.
    Fired,
}

/// `DeadlineNode::deadline`.
pub(crate) struct DeadlineWord(AtomicU64);

impl DeadlineWord {
    /// A word holding `word` (from [`encode`]; never `FIRED`).
    pub(crate) fn new(word: u64) -> DeadlineWord {
        DeadlineWord(AtomicU64::new(word))
    }

    /// The current deadline (`None`: never), fired or not.
    pub(crate) fn get(&self) -> Option<Instant> {
        // Relaxed: a value on its own; nothing else is read through it.
        decode(self.0.load(Ordering::Relaxed))
    }

    /// The current word's time bits.
    pub(crate) fn time_bits(&self) -> u64 {
        // Relaxed: read under the timer lock by `rearm` (the claim's CAS
        // is under the same lock), or as a value on its own.
        self.0.load(Ordering::Relaxed) & TIME
    }

    /// Moves the deadline to `new` (a word from [`encode_or_never`]) unless
    /// the timer claimed it: one CAS, no lock.
    pub(crate) fn try_move(&self, new: u64) -> Moved {
        debug_assert_eq!(new & FIRED, 0);
        // Relaxed: the CAS below decides; the value only seeds it.
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if cur & FIRED != 0 {
                return Moved::Fired;
            }
            let moved = if new < cur {
                Moved::Earlier
            } else {
                Moved::Later
            };
            // Relaxed on both sides: the word is its own synchronisation
            // (all accesses are RMWs on it, so they are totally ordered and
            // a move is either before the claim's CAS, which then reads it,
            // or after, and fails on `FIRED`); the node's memory is kept
            // valid by the caller's reference, not by this word.
            match self
                .0
                .compare_exchange(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return moved,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The timer's claim, once it has popped the entry at `now` (a word):
    /// sets `FIRED` if the deadline has passed, else reports where the
    /// deadline moved. Never fires before the current deadline: the CAS
    /// fails if a move changed the word since it was read.
    pub(crate) fn claim(&self, now: u64) -> Claimed {
        // Relaxed: the CAS below decides.
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if cur & FIRED != 0 {
                return Claimed::Already;
            }
            if cur > now {
                return Claimed::Later(cur);
            }
            // Relaxed: see `try_move`; the node is kept valid by the timer
            // lock and then by the reference `try_acquire` takes.
            match self
                .0
                .compare_exchange(cur, cur | FIRED, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Claimed::Fire,
                Err(actual) => cur = actual,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exactly() {
        let now = Instant::now();
        for at in [
            now,
            now + Duration::from_nanos(1),
            now + Duration::from_secs(3600),
        ] {
            assert_eq!(decode(encode(at).unwrap()), Some(at));
        }
        assert_eq!(decode(NEVER), None);
        assert_eq!(decode(NEVER | FIRED), None);
    }

    #[test]
    fn far_instants_are_never() {
        let now = Instant::now();
        if let Some(far) = now.checked_add(Duration::from_secs(300 * 365 * 24 * 3600)) {
            assert_eq!(encode(far), None);
        }
        assert_eq!(encode_or_never(None), NEVER);
        assert!(far() > now);
    }

    #[test]
    fn claim_and_move_have_one_winner() {
        let w = DeadlineWord::new(100);
        assert_eq!(w.claim(50), Claimed::Later(100));
        assert_eq!(w.try_move(200), Moved::Later);
        assert_eq!(w.claim(150), Claimed::Later(200));
        assert_eq!(w.try_move(120), Moved::Earlier);
        assert_eq!(w.claim(150), Claimed::Fire);
        assert_eq!(w.try_move(500), Moved::Fired);
        assert_eq!(w.claim(1000), Claimed::Already);
        assert_eq!(w.time_bits(), 120);
    }
}
