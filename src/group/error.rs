//! The errors a group records for a task that did not end by itself:
//! [`Panicked`] (it panicked) and [`TaskDropped`] (its spawner dropped it).

use std::fmt;

use super::PanicPayload;

/// The cause a group's context is cancelled with when one of its tasks
/// panics (the panic itself is resumed by [`Group::wait`] /
/// [`Group::join`]). Display: `group task panicked: <message>`.
///
/// [`Group::wait`]: super::Group::wait
/// [`Group::join`]: super::Group::join
///
/// ```
/// use ctxtree::{Context, group::{Group, Panicked}};
/// let g = Group::new(&Context::background());
/// g.go(|| -> Result<(), std::io::Error> { panic!("boom") });
/// let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.wait()));
/// assert!(caught.is_err()); // the panic reached the waiter
/// let cause = g.context().cause().unwrap();
/// assert_eq!(cause.downcast_ref::<Panicked>().unwrap().message(), "boom");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked {
    message: String,
}

impl Panicked {
    pub(super) fn from_payload(payload: &PanicPayload) -> Panicked {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "Box<dyn Any>".to_owned()
        };
        Panicked { message }
    }

    /// The panic's message (`"Box<dyn Any>"` if the payload was not a
    /// string).
    ///
    /// ```
    /// # use ctxtree::{Context, group::{Group, Panicked}};
    /// let g = Group::new(&Context::background());
    /// g.go(|| -> Result<(), std::io::Error> { panic!("at the disco") });
    /// let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.wait()));
    /// let cause = g.context().cause().unwrap();
    /// assert_eq!(cause.to_string(), "group task panicked: at the disco");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group task panicked: {}", self.message)
    }
}

impl std::error::Error for Panicked {}

/// The error a group records when a spawned future is dropped before it
/// completed — the [spawner](super::Group::with_spawner) dropped it, e.g.
/// because its runtime shut down — so that [`Group::wait`] does not wait
/// forever. Display: `group task dropped before it completed`.
///
/// [`Group::wait`]: super::Group::wait
///
/// ```
/// use ctxtree::{Context, group::{Group, TaskDropped}};
/// // A spawner that drops every future it is given.
/// let g = Group::new(&Context::background()).with_spawner(drop);
/// g.spawn(async { Ok::<(), std::io::Error>(()) });
/// let err = g.wait().unwrap_err();
/// assert!(err.is::<TaskDropped>());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskDropped;

impl fmt::Display for TaskDropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("group task dropped before it completed")
    }
}

impl std::error::Error for TaskDropped {}
