//! The state word: one atomic pointer per cancellable node that says whether
//! the node is done and, if so, why.
//!
//! # State table
//!
//! | word                         | meaning                                            |
//! |------------------------------|----------------------------------------------------|
//! | `null`                       | live (not done)                                    |
//! | `tag(ERR)` (no pointer)      | done with `ERR`, default cause (`Arc::new(ERR)`)   |
//! | `ptr | tag(ERR)`             | done with `ERR`, cause in `*ptr`, owned by an ancestor |
//! | `ptr | tag(ERR) | OWNED`     | done with `ERR`, cause in `*ptr`, owned by this node |
//!
//! `ERR` is 1 (`Canceled`) or 2 (`DeadlineExceeded`) in the two low bits.
//!
//! The only transition is `null → done`, made by one successful
//! compare-exchange (`try_finish`); a done word is never replaced
//! (invariant 1 in `docs/DESIGN.md`). Because the reason and the cause are
//! published by that one store, `err()` and `cause()` can never disagree,
//! and `is_done()` is one Acquire load.
//!
//! A word without `OWNED` borrows its record from the ancestor that was
//! cancelled; every node keeps its ancestors alive (invariant 2), so the
//! record outlives every node that points at it.

use std::ptr;

use crate::error::{default_cause, Cause, Error};
use crate::sync::{AtomicPtr, Ordering};

/// The immutable record a custom cause lives in. Aligned to 8 so the three
/// low bits of a pointer to it are free for tags.
#[repr(align(8))]
pub(crate) struct Outcome {
    cause: Cause,
}

const CANCELED: usize = 0b001;
const DEADLINE: usize = 0b010;
const ERR_MASK: usize = 0b011;
const OWNED: usize = 0b100;
const TAG_MASK: usize = 0b111;

/// A loaded (or to-be-stored) state word. `Copy`; the pointer inside is
/// only dereferenced while the node that holds it is alive.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Snapshot(*mut Outcome);

// SAFETY: a `Snapshot` is an immutable value; the record it may point to is
// only read (never written) and holds a `Send + Sync` cause.
unsafe impl Send for Snapshot {}
// SAFETY: as above.
unsafe impl Sync for Snapshot {}

impl Snapshot {
    /// The live state.
    pub(crate) const LIVE: Snapshot = Snapshot(ptr::null_mut());

    /// A done word for `err`. With `cause == None` no allocation is made and
    /// `cause()` answers the shared default `Arc::new(err)`; otherwise the
    /// cause goes into a fresh record that the word owns.
    pub(crate) fn new_owned(err: Error, cause: Option<Cause>) -> Snapshot {
        let bits = match err {
            Error::Canceled => CANCELED,
            Error::DeadlineExceeded => DEADLINE,
        };
        match cause {
            None => Snapshot(ptr::without_provenance_mut(bits)),
            Some(cause) => {
                let record = Box::into_raw(Box::new(Outcome { cause }));
                Snapshot(record.map_addr(|a| a | bits | OWNED))
            }
        }
    }

    /// The same outcome, as a word a descendant stores: it points at the
    /// same record without owning it.
    #[inline]
    pub(crate) fn borrowed(self) -> Snapshot {
        Snapshot(self.0.map_addr(|a| a & !OWNED))
    }

    #[inline]
    pub(crate) fn is_done(self) -> bool {
        !self.0.is_null()
    }

    /// `Err(_)` exactly when done.
    #[inline]
    pub(crate) fn err(self) -> Result<(), Error> {
        match self.0.addr() & ERR_MASK {
            0 => Ok(()),
            CANCELED => Err(Error::Canceled),
            _ => Err(Error::DeadlineExceeded),
        }
    }

    fn record(self) -> *mut Outcome {
        self.0.map_addr(|a| a & !TAG_MASK)
    }

    /// The cause, `None` exactly when live.
    ///
    /// # Safety
    /// The node this word was loaded from (or one of its descendants) must
    /// still be alive, so that a record it points to is not freed
    /// (invariant 2).
    pub(crate) unsafe fn cause(self) -> Option<Cause> {
        let err = self.err().err()?;
        let record = self.record();
        if record.is_null() {
            return Some(default_cause(err));
        }
        // SAFETY: a non-null record pointer in a done word points to a live
        // `Outcome`: it is freed only when its owner dies, and the caller
        // keeps the owner alive (this function's contract, invariant 2).
        Some(unsafe { &*record }.cause.clone())
    }

    /// Frees the record if this word owns one.
    ///
    /// # Safety
    /// Called once, by the owner of the word, when no node can read the
    /// record any more (the owner is dying, or the word was never published).
    pub(crate) unsafe fn free_if_owned(self) {
        if self.0.addr() & OWNED != 0 {
            // SAFETY: an OWNED word was made by `new_owned` from
            // `Box::into_raw`, and the caller guarantees this is the last use.
            drop(unsafe { Box::from_raw(self.record()) });
        }
    }
}

/// The atomic state word of a cancellable node (see the module docs).
pub(crate) struct StateWord(AtomicPtr<Outcome>);

impl StateWord {
    pub(crate) fn new(initial: Snapshot) -> Self {
        StateWord(AtomicPtr::new(initial.0))
    }

    /// Acquire: pairs with the AcqRel compare-exchange in `try_finish`, so a
    /// reader that sees the word done also sees the record it points to.
    #[inline]
    pub(crate) fn load(&self) -> Snapshot {
        Snapshot(self.0.load(Ordering::Acquire))
    }

    /// SeqCst load: the pusher's half of the push/cancel handshake (see
    /// `ChildList::push`), right after its SeqCst push.
    #[inline]
    pub(crate) fn load_after_push(&self) -> Snapshot {
        crate::sync::sc_handshake();
        Snapshot(self.0.load(Ordering::SeqCst))
    }

    /// The one transition: live → `done`. Returns the word now in force:
    /// `Ok(done)` if this call made it, `Err(current)` if the node was
    /// already done (the first cancellation wins, invariant 1).
    ///
    /// SeqCst (success and failure): Release publishes the record; Acquire
    /// lets the loser read the winner's record; SeqCst because it is the
    /// canceller's half of the push/cancel handshake (see
    /// `ChildList::push`): a walker that then finds the node's list empty
    /// need not seal it.
    pub(crate) fn try_finish(&self, done: Snapshot) -> Result<Snapshot, Snapshot> {
        match self
            .0
            .compare_exchange(ptr::null_mut(), done.0, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => Ok(done),
            Err(current) => Err(Snapshot(current)),
        }
    }
}
