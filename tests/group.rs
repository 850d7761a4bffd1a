//! `ctxtree::group::Group` (Go's errgroup.WithContext + SetLimit): threads,
//! futures driven by the group itself and by a spawner, first-error
//! cancellation, limits and panics. Every test runs under a watchdog.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use common::{with_watchdog, NumberedError, TestError};
use ctxtree::group::{Group, Panicked, TaskDropped};
use ctxtree::{Context, Error};

#[test]
fn first_thread_error_cancels_the_others_with_it_as_the_cause() {
    with_watchdog(20, || {
        let (parent, _keep) = Context::background().with_cancel();
        let g = Group::new(&parent);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        for _ in 0..3 {
            let ctx = g.context().clone();
            let seen = Arc::clone(&seen);
            g.go(move || {
                let err = ctx.wait();
                seen.lock()
                    .unwrap()
                    .push((err, ctx.cause().unwrap().to_string()));
                Err(TestError("sibling saw cancellation"))
            });
        }
        g.go(|| Err(TestError("first")));
        let err = g.wait().unwrap_err();
        assert_eq!(err.downcast_ref::<TestError>(), Some(&TestError("first")));
        assert!(Arc::ptr_eq(&err, &g.context().cause().unwrap()));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "wait returned before every task ended");
        for (e, cause) in seen.iter() {
            assert_eq!(*e, Error::Canceled);
            assert_eq!(cause, "test error: first");
        }
        assert!(
            !parent.is_done(),
            "a group failure must not reach the parent"
        );
    });
}

#[test]
fn futures_are_driven_by_join_without_a_runtime() {
    with_watchdog(20, || {
        let g = Group::new(&Context::background());
        let ran = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = futures::channel::oneshot::channel::<u32>();
        // One future waits on another one's message: both polled by join.
        {
            let ran = Arc::clone(&ran);
            g.spawn(async move {
                assert_eq!(rx.await.unwrap(), 7);
                ran.fetch_add(1, SeqCst);
                Ok::<_, TestError>(())
            });
        }
        {
            let ran = Arc::clone(&ran);
            g.spawn(async move {
                tx.send(7).unwrap();
                ran.fetch_add(1, SeqCst);
                Ok::<_, TestError>(())
            });
        }
        // Woken from another thread while join is parked.
        let (late_tx, late_rx) = futures::channel::oneshot::channel::<()>();
        g.spawn(async move { late_rx.await.map_err(|_| TestError("late sender gone")) });
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            late_tx.send(()).unwrap();
        });
        futures::executor::block_on(g.join()).unwrap();
        sender.join().unwrap();
        assert_eq!(ran.load(SeqCst), 2);
        assert!(g.is_empty());
        assert!(g.context().is_done(), "join cancels the group's context");
    });
}

#[test]
fn first_future_error_wins_and_wait_polls_futures() {
    with_watchdog(20, || {
        let g = Group::new(&Context::background());
        for i in 0..4 {
            let ctx = g.context().clone();
            g.spawn(async move {
                if i == 2 {
                    return Err(NumberedError(i));
                }
                ctx.done().await;
                Err(NumberedError(100 + i))
            });
        }
        let err = g.wait().unwrap_err();
        assert_eq!(err.downcast_ref::<NumberedError>(), Some(&NumberedError(2)));
        assert!(Arc::ptr_eq(&err, &g.context().cause().unwrap()));
    });
}

#[test]
fn spawner_runs_futures_on_tokio_and_join_awaits_them() {
    with_watchdog(20, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        rt.block_on(async move {
            let g = Group::new(&Context::background()).with_spawner(move |fut| {
                handle.spawn(fut);
            });
            let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
            for _ in 0..4 {
                let threads = Arc::clone(&threads);
                let ctx = g.context().clone();
                g.spawn(async move {
                    threads
                        .lock()
                        .unwrap()
                        .push(std::thread::current().name().map(str::to_owned));
                    ctx.run_until_done(tokio::time::sleep(Duration::from_millis(5)))
                        .await?;
                    Ok::<_, Error>(())
                });
            }
            // The join future is owned: it can be spawned itself.
            tokio::spawn(g.join()).await.unwrap().unwrap();
            assert_eq!(threads.lock().unwrap().len(), 4);
        });
    });
}

#[test]
fn limit_bounds_running_threads_and_futures() {
    with_watchdog(30, || {
        let g = Group::new(&Context::background());
        g.set_limit(2);
        let now = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        for _ in 0..6 {
            let (now, max) = (Arc::clone(&now), Arc::clone(&max));
            g.go(move || {
                max.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
                std::thread::sleep(Duration::from_millis(2));
                now.fetch_sub(1, SeqCst);
                Ok::<_, TestError>(())
            });
        }
        // Futures that yield a few times while holding their slot.
        for _ in 0..6 {
            let (now, max) = (Arc::clone(&now), Arc::clone(&max));
            g.spawn(async move {
                max.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
                for _ in 0..3 {
                    yield_now().await;
                }
                now.fetch_sub(1, SeqCst);
                Ok::<_, TestError>(())
            });
        }
        g.wait().unwrap();
        assert_eq!(now.load(SeqCst), 0);
        let max = max.load(SeqCst);
        assert!((1..=2).contains(&max), "max concurrency {max} with limit 2");
    });
}

#[test]
fn queued_futures_start_when_the_limit_rises() {
    with_watchdog(20, || {
        let g = Group::new(&Context::background());
        g.set_limit(1);
        // The only slot is held by a thread until we release it.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        g.go(move || release_rx.recv().map_err(|_| TestError("release")));
        let started = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let started = Arc::clone(&started);
            g.spawn(async move {
                started.fetch_add(1, SeqCst);
                Ok::<_, TestError>(())
            });
        }
        assert_eq!(g.len(), 4);
        assert!(!g.try_go(|| Ok::<_, TestError>(())), "limit reached");
        g.set_limit(0); // no limit: the queued futures may start
        assert!(g.try_go(|| Ok::<_, TestError>(())));
        release_tx.send(()).unwrap();
        g.wait().unwrap();
        assert_eq!(started.load(SeqCst), 3);
    });
}

#[test]
fn go_blocks_at_the_limit_until_a_slot_frees() {
    with_watchdog(20, || {
        let g = Group::new(&Context::background());
        g.set_limit(1);
        let barrier = Arc::new(Barrier::new(2));
        {
            let barrier = Arc::clone(&barrier);
            g.go(move || {
                barrier.wait(); // hold the slot until the main thread is ready
                Ok::<_, TestError>(())
            });
        }
        let (tx, rx) = mpsc::channel();
        let g2 = g.clone();
        let blocked = std::thread::spawn(move || {
            g2.go(|| Ok::<_, TestError>(()));
            tx.send(()).unwrap();
        });
        // While the slot is held, the second go cannot have returned.
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        barrier.wait();
        rx.recv().unwrap();
        blocked.join().unwrap();
        g.wait().unwrap();
    });
}

#[test]
fn a_panic_cancels_the_group_and_reaches_the_waiter() {
    with_watchdog(20, || {
        let g = Group::new(&Context::background());
        let ctx = g.context().clone();
        let sibling_saw = Arc::new(std::sync::Mutex::new(None));
        {
            let seen = Arc::clone(&sibling_saw);
            g.go(move || {
                ctx.wait();
                *seen.lock().unwrap() = ctx.cause().map(|c| c.to_string());
                Ok::<_, TestError>(())
            });
        }
        g.spawn(async { panic!("kaboom") as Result<(), TestError> });
        let payload = catch_unwind(AssertUnwindSafe(|| g.wait())).unwrap_err();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"kaboom"));
        assert_eq!(
            sibling_saw.lock().unwrap().as_deref(),
            Some("group task panicked: kaboom")
        );
        let cause = g.context().cause().unwrap();
        assert_eq!(
            cause.downcast_ref::<Panicked>().unwrap().message(),
            "kaboom"
        );
        // The panic is resumed once; a later wait returns its cause.
        assert!(g.wait().unwrap_err().is::<Panicked>());
    });
}

#[test]
fn a_thread_panic_reaches_an_async_joiner() {
    with_watchdog(20, || {
        let g = Group::new(&Context::background());
        g.go(|| -> Result<(), TestError> { panic!("{}", String::from("owned message")) });
        let payload =
            catch_unwind(AssertUnwindSafe(|| futures::executor::block_on(g.join()))).unwrap_err();
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some("owned message")
        );
    });
}

#[test]
fn parent_cancellation_reaches_tasks_and_success_is_ok() {
    with_watchdog(20, || {
        let (parent, cancel) = Context::background().with_cancel();
        let g = Group::new(&parent);
        for _ in 0..3 {
            let ctx = g.context().clone();
            g.go(move || {
                ctx.wait();
                Ok::<_, TestError>(())
            });
        }
        cancel.cancel_with_cause(TestError("shutdown"));
        assert!(g.wait().is_ok(), "no task failed");
        assert_eq!(
            g.context().cause().unwrap().to_string(),
            "test error: shutdown"
        );
    });
}

#[test]
fn tasks_can_spawn_tasks_through_a_clone() {
    with_watchdog(20, || {
        let g = Group::new(&Context::background());
        let count = Arc::new(AtomicUsize::new(0));
        let g2 = g.clone();
        let c = Arc::clone(&count);
        g.go(move || {
            for _ in 0..5 {
                let c = Arc::clone(&c);
                g2.spawn(async move {
                    c.fetch_add(1, SeqCst);
                    Ok::<_, TestError>(())
                });
            }
            Ok::<_, TestError>(())
        });
        g.wait().unwrap();
        assert_eq!(count.load(SeqCst), 5);
    });
}

#[test]
fn a_future_the_spawner_drops_is_an_error_not_a_hang() {
    with_watchdog(20, || {
        let g = Group::new(&Context::background()).with_spawner(drop);
        g.spawn(async { Ok::<_, TestError>(()) });
        let err = g.wait().unwrap_err();
        assert!(err.is::<TaskDropped>());
        assert!(g.context().cause().unwrap().is::<TaskDropped>());
    });
}

#[test]
fn dropping_every_handle_cancels_the_group_context() {
    with_watchdog(20, || {
        let g = Group::new(&Context::background());
        let ctx = g.context().clone();
        let join = g.join();
        drop(g);
        assert!(!ctx.is_done(), "the Join still owns the group");
        drop(join);
        assert_eq!(ctx.err(), Err(Error::Canceled));
    });
}

#[test]
fn an_empty_group_waits_for_nothing() {
    with_watchdog(20, || {
        let g = Group::new(&Context::background());
        assert!(g.wait().is_ok());
        assert!(futures::executor::block_on(g.join()).is_ok());
    });
}

/// Returns Pending once, waking itself (a runtime-agnostic yield).
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}
