//! The movable deadline of a deadline node (`DeadlineNode::deadline`): the
//! deadline it was created with, exact and immutable, and one atomic word
//! that says where it moved; the only place that converts between
//! `Instant`s and words.
//!
//! The word's low 63 bits are [`UNMOVED`] (the deadline is the creation
//! deadline: any `Instant`, reported exactly), [`NEVER`] (no deadline, after
//! a move to `Duration::MAX` or to an instant too far to represent), or the
//! deadline it moved to, in nanoseconds since [`base`], a process-wide
//! `Instant` about 34 years before the first use (so the low 63 bits reach
//! about 258 years past the first use; a move before the base is clamped to
//! it: such a deadline has long passed). Bit 63 ([`FIRED`]) is set once, by
//! the timer's claim, and never cleared; the time bits stay, so `deadline()`
//! still reports the deadline after it fired.
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
const FIRED: u64 = 1 << 63;
/// The low 63 bits.
const TIME: u64 = FIRED - 1;
/// Low bits: the deadline is the creation deadline.
const UNMOVED: u64 = TIME;
/// Low bits: no deadline (never fires).
const NEVER: u64 = TIME - 1;
/// How far before the first use the base lies, at most (about 34 years).
const BACK: Duration = Duration::from_secs(1 << 30);

/// Set (for good) by the first move in the process. Until then every
/// deadline node's deadline is the one it was created with, and Go's rule
/// (a deadline node only below a later deadline) makes the nearest one the
/// earliest: `deadline()` can stop there, as before moves existed.
static MOVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether any deadline was ever moved in this process.
pub(crate) fn any_moved() -> bool {
    // Relaxed: a move that happens before a `deadline()` call stored the
    // flag before its CAS, so the call's load sees it (coherence); with a
    // concurrent move, either answer is one a reader could get anyway.
    MOVED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The process-wide time zero of moved deadlines: `BACK` before the first
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

/// The word of a move to `at` (`None`: never): nanoseconds since [`base`]
/// (0 for an instant before it), or [`NEVER`] for an instant too far ahead
/// (about 258 years after the first use or more).
fn encode(at: Option<Instant>) -> u64 {
    let Some(at) = at else { return NEVER };
    let since = at.saturating_duration_since(base());
    match u64::try_from(since.as_nanos()) {
        Ok(nanos) if nanos < NEVER => nanos,
        _ => NEVER,
    }
}

/// Where the timer re-arms an entry whose deadline is "never": as far as
/// the base and the platform allow (it re-arms again when it gets there,
/// centuries later).
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
    /// The deadline moved later than `now`: re-arm at this instant
    /// (`None`: never, see [`far`]).
    Later(Option<Instant>),
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
pub(crate) struct DeadlineWord {
    /// The deadline the node was created with (immutable).
    created: Instant,
    word: AtomicU64,
}

impl DeadlineWord {
    /// A deadline created at `created`, not moved.
    pub(crate) fn new(created: Instant) -> DeadlineWord {
        DeadlineWord {
            created,
            word: AtomicU64::new(UNMOVED),
        }
    }

    /// The deadline a word's time bits mean (`None`: never).
    fn decode(&self, word: u64) -> Option<Instant> {
        match word & TIME {
            UNMOVED => Some(self.created),
            NEVER => None,
            nanos => Some(
                base()
                    .checked_add(Duration::from_nanos(nanos))
                    .unwrap_or_else(far),
            ),
        }
    }

    /// The current deadline (`None`: never), fired or not.
    pub(crate) fn get(&self) -> Option<Instant> {
        // Relaxed: a value on its own (read under the entry's shard lock by the
        // re-arm, whose claim CAS is under the same lock); nothing else is
        // read through it.
        self.decode(self.word.load(Ordering::Relaxed))
    }

    /// Moves the deadline to `new` (`None`: never) unless the timer
    /// claimed it: one CAS, no lock.
    pub(crate) fn try_move(&self, new: Option<Instant>) -> Moved {
        if !any_moved() {
            // Relaxed: see `any_moved`.
            MOVED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let word = encode(new);
        // The instant the word means (clamped to the base, or never).
        let new = self.decode(word);
        // Relaxed: the CAS below decides; the value only seeds it.
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            if cur & FIRED != 0 {
                return Moved::Fired;
            }
            let earlier = match (new, self.decode(cur)) {
                (Some(n), Some(c)) => n < c,
                (Some(_), None) => true,
                (None, _) => false,
            };
            // Relaxed on both sides: the word is its own synchronisation
            // (all writes are RMWs on it, so they are totally ordered and a
            // move is either before the claim's CAS, which then fails and
            // re-reads it, or after, and fails on `FIRED`); the node's memory
            // is kept valid by the caller's reference, not by this word.
            match self
                .word
                .compare_exchange(cur, word, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) if earlier => return Moved::Earlier,
                Ok(_) => return Moved::Later,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The timer's claim, once it has popped the entry at `now`: sets
    /// `FIRED` if the deadline has passed, else reports where the deadline
    /// moved. Never fires before the current deadline: the CAS fails if a
    /// move changed the word since it was read.
    pub(crate) fn claim(&self, now: Instant) -> Claimed {
        // Relaxed: the CAS below decides.
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            if cur & FIRED != 0 {
                return Claimed::Already;
            }
            match self.decode(cur) {
                Some(at) if at <= now => {}
                later => return Claimed::Later(later),
            }
            // Relaxed: see `try_move`; the node is kept valid by the timer
            // lock and then by the reference `try_acquire` takes.
            match self
                .word
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
        let w = DeadlineWord::new(now);
        assert_eq!(w.get(), Some(now));
        for at in [
            now,
            now + Duration::from_nanos(1),
            now + Duration::from_secs(3600),
        ] {
            w.try_move(Some(at));
            assert_eq!(w.get(), Some(at));
        }
        w.try_move(None);
        assert_eq!(w.get(), None);
    }

    #[test]
    fn far_instants_are_never_once_moved() {
        let now = Instant::now();
        if let Some(far_away) = now.checked_add(Duration::from_secs(300 * 365 * 24 * 3600)) {
            // Created there: reported exactly.
            let w = DeadlineWord::new(far_away);
            assert_eq!(w.get(), Some(far_away));
            // Moved there: never.
            assert_eq!(w.try_move(Some(far_away)), Moved::Later);
            assert_eq!(w.get(), None);
        }
        assert!(far() > now);
    }

    #[test]
    fn claim_and_move_have_one_winner() {
        let t = Instant::now() + Duration::from_secs(100);
        let at = |s: u64| t + Duration::from_secs(s);
        let w = DeadlineWord::new(at(100));
        assert_eq!(w.claim(at(50)), Claimed::Later(Some(at(100))));
        assert_eq!(w.try_move(Some(at(200))), Moved::Later);
        assert_eq!(w.claim(at(150)), Claimed::Later(Some(at(200))));
        assert_eq!(w.try_move(Some(at(120))), Moved::Earlier);
        assert_eq!(w.try_move(None), Moved::Later);
        assert_eq!(w.claim(at(150)), Claimed::Later(None));
        assert_eq!(w.try_move(Some(at(120))), Moved::Earlier);
        assert_eq!(w.claim(at(150)), Claimed::Fire);
        assert_eq!(w.try_move(Some(at(500))), Moved::Fired);
        assert_eq!(w.claim(at(1000)), Claimed::Already);
        assert_eq!(w.get(), Some(at(120)));
    }
}
