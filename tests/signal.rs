//! `ctxtree::signal` (Go's signal.NotifyContext): the process sends itself
//! real signals. Signals are process-wide, so this binary holds one test
//! that runs its cases in order, plus a child mode (re-running this binary)
//! for "a second signal exits". Everything runs under a watchdog.
#![cfg(unix)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::with_watchdog;
use ctxtree::signal::{notify_context, NotifyContext, Signal, SIGUSR1, SIGUSR2};
use ctxtree::{Context, Error};

const CHILD_ENV: &str = "CTXTREE_SIGNAL_TEST_CHILD";

#[test]
fn signals_cancel_the_context_with_a_cause_naming_the_signal() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // the child runs only `second_signal_child`
    }
    with_watchdog(30, || {
        // 1. The signal cancels the context; the cause names it.
        let (parent, _keep) = Context::background().with_cancel();
        let (ctx, stop) = notify_context(&parent, &[SIGUSR1, SIGUSR2]).unwrap();
        assert!(!ctx.is_done());
        signal_hook::low_level::raise(SIGUSR2).unwrap();
        assert_eq!(ctx.wait(), Error::Canceled);
        let cause = ctx.cause().unwrap();
        assert_eq!(cause.downcast_ref::<Signal>(), Some(&Signal::new(SIGUSR2)));
        assert_eq!(cause.to_string(), "received signal SIGUSR2");
        assert!(!parent.is_done(), "only the child is cancelled");
        stop.stop();

        // 2. After stop, a new context does not see the old registration,
        //    and stop cancels with Canceled (Go's stop).
        let (ctx2, stop2) = notify_context(&Context::background(), &[SIGUSR1]).unwrap();
        stop2.stop();
        assert_eq!(ctx2.err(), Err(Error::Canceled));
        assert!(ctx2.cause().unwrap().downcast_ref::<Error>().is_some());

        // 3. Forbidden signals are an error, not a panic.
        let err =
            notify_context(&Context::background(), &[signal_hook::consts::SIGKILL]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(notify_context(&Context::background(), &[0]).is_err());
        assert!(notify_context(&Context::background(), &[1000]).is_err());

        // 4. A second signal exits, in a child process.
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "second_signal_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("first signal: received signal SIGUSR1"),
            "{stdout}"
        );
        assert_eq!(out.status.code(), Some(128 + SIGUSR1), "{stdout}");
        assert!(!stdout.contains("survived"), "{stdout}");
    });
}

/// Run only as a child of the test above: the first SIGUSR1 cancels, the
/// second exits the process with status 128 + SIGUSR1.
#[test]
fn second_signal_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let (ctx, _stop) = NotifyContext::new(&[SIGUSR1])
        .exit_on_second_signal()
        .start(&Context::background())
        .unwrap();
    signal_hook::low_level::raise(SIGUSR1).unwrap();
    assert_eq!(
        ctx.wait_timeout(Duration::from_secs(10)),
        Some(Error::Canceled)
    );
    println!("first signal: {}", ctx.cause().unwrap());
    signal_hook::low_level::raise(SIGUSR1).unwrap();
    std::thread::sleep(Duration::from_secs(10));
    println!("survived the second signal");
}
