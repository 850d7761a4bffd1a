//! A context ended by process signals (Go's `signal.NotifyContext`).
//!
//! A server or CLI should stop cleanly on Ctrl-C or `SIGTERM`: cancel
//! its root context, with a cause that says which signal, and let the
//! context tree stop everything below it. [`notify_context`] does that
//! with no async runtime: a small thread (`ctxtree-signal`) waits for the
//! signals (registered through [signal-hook], made for this) and cancels
//! the context with a [`Signal`] cause. Optionally, as Go programs do
//! after `stop()`, a second signal ends the process at once
//! ([`NotifyContext::exit_on_second_signal`]), for shutdowns that hang.
//!
//! Unix only, behind the `signal` cargo feature.
//!
//! | Go | ctxtree |
//! |---|---|
//! | `ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)` | `let (ctx, stop) = notify_context(&parent, &[SIGINT, SIGTERM])?;` |
//! | `defer stop()` | `stop.stop()` (dropping `stop` does not unregister) |
//! | `context.Cause(ctx)` | `ctx.cause()`, a [`Signal`] |
//!
//! ```no_run
//! use ctxtree::{Context, signal::{notify_context, SIGINT, SIGTERM}};
//!
//! # fn main() -> std::io::Result<()> {
//! let (ctx, stop) = notify_context(&Context::background(), &[SIGINT, SIGTERM])?;
//! while !ctx.is_done() {
//!     // ... work in steps, checking the context between them ...
//! #   break;
//! }
//! ctx.wait(); // or ctx.done().await in async code
//! eprintln!("stopping: {}", ctx.cause().unwrap()); // "received signal SIGINT"
//! stop.stop();
//! # Ok(()) }
//! ```
//!
//! [signal-hook]: https://docs.rs/signal-hook

use std::fmt;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};

use signal_hook::iterator::{Handle, Signals};
use signal_hook::SigId;

use crate::{CancelHandle, Context};

pub use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};

/// The cause of a context ended by a signal. Display:
/// `received signal <NAME>` (e.g. `received signal SIGTERM`).
///
/// ```
/// use ctxtree::signal::{Signal, SIGTERM};
/// let s = Signal::new(SIGTERM);
/// assert_eq!(s.number(), SIGTERM);
/// assert_eq!(s.name(), Some("SIGTERM"));
/// assert_eq!(s.to_string(), "received signal SIGTERM");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal {
    number: i32,
}

impl Signal {
    /// The cause for signal `number`.
    ///
    /// ```
    /// assert_eq!(ctxtree::signal::Signal::new(ctxtree::signal::SIGINT).name(), Some("SIGINT"));
    /// ```
    pub fn new(number: i32) -> Signal {
        Signal { number }
    }

    /// The signal's number.
    ///
    /// ```
    /// assert_eq!(ctxtree::signal::Signal::new(2).number(), 2);
    /// ```
    pub fn number(&self) -> i32 {
        self.number
    }

    /// The signal's name (`"SIGINT"`), if known.
    ///
    /// ```
    /// assert_eq!(ctxtree::signal::Signal::new(4242).name(), None);
    /// ```
    pub fn name(&self) -> Option<&'static str> {
        signal_hook::low_level::signal_name(self.number)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "received signal {name}"),
            None => write!(f, "received signal {}", self.number),
        }
    }
}

impl std::error::Error for Signal {}

/// Options for a signal context: which signals, and whether a second one
/// exits. [`notify_context`] is `NotifyContext::new(signals).start(parent)`.
///
/// ```no_run
/// use ctxtree::{Context, signal::NotifyContext};
/// # fn main() -> std::io::Result<()> {
/// let (ctx, stop) = NotifyContext::terminate() // SIGINT and SIGTERM
///     .exit_on_second_signal()                 // a second one exits at once
///     .start(&Context::background())?;
/// # drop((ctx, stop)); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NotifyContext {
    signals: Vec<i32>,
    exit_on_second: bool,
}

impl NotifyContext {
    /// A signal context for `signals`.
    ///
    /// ```
    /// let n = ctxtree::signal::NotifyContext::new(&[ctxtree::signal::SIGHUP]);
    /// # let _ = n;
    /// ```
    pub fn new(signals: &[i32]) -> NotifyContext {
        NotifyContext {
            signals: signals.to_vec(),
            exit_on_second: false,
        }
    }

    /// The usual pair: `SIGINT` (Ctrl-C) and `SIGTERM` (what `kill`,
    /// systemd and Kubernetes send).
    ///
    /// ```
    /// let n = ctxtree::signal::NotifyContext::terminate();
    /// # let _ = n;
    /// ```
    pub fn terminate() -> NotifyContext {
        NotifyContext::new(&[SIGINT, SIGTERM])
    }

    /// After the first signal has cancelled the context, a second one of
    /// the set ends the process at once, with exit status `128 + signal`
    /// (what a shell reports for a process killed by it), from the signal
    /// handler itself, so it works even if every thread is stuck. Go
    /// programs get this by calling `stop()` once the context is done,
    /// which restores the default action.
    ///
    /// ```
    /// let n = ctxtree::signal::NotifyContext::terminate().exit_on_second_signal();
    /// # let _ = n;
    /// ```
    pub fn exit_on_second_signal(mut self) -> NotifyContext {
        self.exit_on_second = true;
        self
    }

    /// Registers the handlers and returns a child of `parent` that is
    /// cancelled with a [`Signal`] cause when one of the signals arrives,
    /// and the handle that unregisters them. Fails (registering nothing)
    /// for signals that cannot be handled (`SIGKILL`, `SIGSTOP`, `SIGSEGV`,
    /// …: signal-hook's `FORBIDDEN`) or out of range, or if the thread
    /// cannot be started.
    ///
    /// ```
    /// use ctxtree::{Context, signal::NotifyContext};
    /// let err = NotifyContext::new(&[9]).start(&Context::background()).unwrap_err(); // SIGKILL
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// ```
    pub fn start(self, parent: &Context) -> io::Result<(Context, SignalStop)> {
        for &sig in &self.signals {
            if signal_hook::consts::FORBIDDEN.contains(&sig) || !(1..=64).contains(&sig) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("signal {sig} cannot be handled"),
                ));
            }
        }
        let (ctx, cancel) = parent.with_cancel();
        let mut hooks = Vec::new();
        let mut register = || -> io::Result<()> {
            if self.exit_on_second {
                let armed = Arc::new(AtomicBool::new(false));
                for &sig in &self.signals {
                    // The shutdown hook first: on the first signal `armed`
                    // is still false (no exit); the flag hook then sets it,
                    // and any later signal of the set exits.
                    hooks.push(signal_hook::flag::register_conditional_shutdown(
                        sig,
                        128 + sig,
                        Arc::clone(&armed),
                    )?);
                    hooks.push(signal_hook::flag::register(sig, Arc::clone(&armed))?);
                }
            }
            Ok(())
        };
        let registered = register();
        let signals = registered.and_then(|()| Signals::new(&self.signals));
        let mut signals = match signals {
            Ok(s) => s,
            Err(e) => {
                unregister(&hooks);
                return Err(e);
            }
        };
        let handle = signals.handle();
        let thread_cancel = cancel.clone();
        let spawned = std::thread::Builder::new()
            .name("ctxtree-signal".into())
            .spawn(move || {
                // `forever` ends when the handle is closed (`stop`).
                if let Some(sig) = signals.forever().next() {
                    thread_cancel.cancel_with_cause(Signal::new(sig));
                }
            });
        if let Err(e) = spawned {
            handle.close();
            unregister(&hooks);
            return Err(e);
        }
        Ok((
            ctx,
            SignalStop {
                inner: Arc::new(Mutex::new(Some(Registered {
                    handle,
                    hooks,
                    cancel,
                }))),
            },
        ))
    }
}

fn unregister(hooks: &[SigId]) {
    for &id in hooks {
        signal_hook::low_level::unregister(id);
    }
}

struct Registered {
    handle: Handle,
    hooks: Vec<SigId>,
    cancel: CancelHandle,
}

/// Unregisters a signal context's handlers ([`stop`](Self::stop)).
/// Dropping it does *not* unregister (as dropping a
/// [`CancelHandle`] does not cancel): the context keeps watching the
/// signals until `stop` or the end of the process.
///
/// Go equivalent: the `stop` function of `signal.NotifyContext`.
///
/// ```
/// use ctxtree::{Context, signal::{notify_context, SIGUSR2}};
/// let (ctx, stop) = notify_context(&Context::background(), &[SIGUSR2]).unwrap();
/// stop.stop();
/// assert!(ctx.is_done()); // like Go's stop, it also cancels the context
/// ```
#[derive(Clone)]
#[must_use = "keep the SignalStop to call stop() later; dropping it does not unregister"]
pub struct SignalStop {
    inner: Arc<Mutex<Option<Registered>>>,
}

impl SignalStop {
    /// Stops watching the signals (the handlers are unregistered, the
    /// thread ends) and cancels the context if no signal did already
    /// (`Canceled`, as Go's `stop` does). Idempotent. Note: like
    /// signal-hook, this does not restore the default action of the
    /// signals (with no other handler left, they are then ignored).
    ///
    /// ```
    /// # use ctxtree::{Context, signal::{notify_context, SIGUSR2}};
    /// let (ctx, stop) = notify_context(&Context::background(), &[SIGUSR2]).unwrap();
    /// stop.stop();
    /// stop.stop(); // no effect
    /// assert_eq!(ctx.err(), Err(ctxtree::Error::Canceled));
    /// ```
    pub fn stop(&self) {
        let registered = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(r) = registered {
            r.handle.close();
            unregister(&r.hooks);
            r.cancel.cancel();
        }
    }
}

impl fmt::Debug for SignalStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stopped = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
        f.debug_struct("SignalStop")
            .field("stopped", &stopped)
            .finish()
    }
}

/// A child of `parent` cancelled with a [`Signal`] cause when one of
/// `signals` arrives; the [`SignalStop`] unregisters them.
///
/// Go equivalent: `signal.NotifyContext(parent, signals...)`.
///
/// ```no_run
/// use ctxtree::{Context, signal::{notify_context, SIGINT, SIGTERM}};
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let (ctx, stop) = notify_context(&Context::background(), &[SIGINT, SIGTERM])?;
/// // axum: .with_graceful_shutdown(async move { ctx.done().await; })
/// ctx.done().await;
/// println!("{}", ctx.cause().unwrap()); // received signal SIGTERM
/// stop.stop();
/// # Ok(()) }
/// ```
pub fn notify_context(parent: &Context, signals: &[i32]) -> io::Result<(Context, SignalStop)> {
    NotifyContext::new(signals).start(parent)
}
