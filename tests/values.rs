//! Request-scoped values: lookup rules, and prompt, deterministic drops.

mod common;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{count, DropCounter, DropCountingError};
use ctxtree::Context;

const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, PartialEq, Eq)]
struct RequestId(u64);

#[derive(Debug, PartialEq, Eq)]
struct User(&'static str);

#[derive(Debug, PartialEq, Eq)]
struct Missing;

// ---- lookup ----------------------------------------------------------------

#[test]
fn value_is_found_on_the_context_it_was_attached_to() {
    let ctx = Context::background().with_value(RequestId(1));
    assert_eq!(ctx.value::<RequestId>(), Some(&RequestId(1)));
}

#[test]
fn roots_have_no_values() {
    assert_eq!(Context::background().value::<RequestId>(), None);
    assert_eq!(Context::todo().value::<u32>(), None);
    assert_eq!(Context::default().value::<String>(), None);
}

#[test]
fn value_of_another_type_is_not_found() {
    let ctx = Context::background()
        .with_value(RequestId(1))
        .with_value(User("ann"));
    assert_eq!(ctx.value::<Missing>(), None);
    assert_eq!(ctx.value::<u64>(), None, "a newtype is not its inner type");
}

#[test]
fn values_of_different_types_are_found_independently() {
    let ctx = Context::background()
        .with_value(RequestId(1))
        .with_value(User("ann"))
        .with_value(5u32);
    assert_eq!(ctx.value::<RequestId>(), Some(&RequestId(1)));
    assert_eq!(ctx.value::<User>(), Some(&User("ann")));
    assert_eq!(ctx.value::<u32>(), Some(&5));
}

#[test]
fn nearest_value_of_a_type_wins() {
    let outer = Context::background().with_value(RequestId(1));
    let inner = outer.with_value(User("x")).with_value(RequestId(2));
    assert_eq!(inner.value::<RequestId>(), Some(&RequestId(2)));
    assert_eq!(inner.value::<User>(), Some(&User("x")));
}

#[test]
fn shadowing_affects_only_descendants_of_the_shadowing_context() {
    let outer = Context::background().with_value(RequestId(1));
    let shadowed = outer.with_value(RequestId(2));
    let sibling = outer.with_value(User("bob"));
    let (below, _h) = shadowed.with_cancel();
    assert_eq!(outer.value::<RequestId>(), Some(&RequestId(1)));
    assert_eq!(sibling.value::<RequestId>(), Some(&RequestId(1)));
    assert_eq!(shadowed.value::<RequestId>(), Some(&RequestId(2)));
    assert_eq!(below.value::<RequestId>(), Some(&RequestId(2)));
}

#[test]
fn values_are_seen_through_cancel_deadline_and_without_cancel_layers() {
    let base = Context::background().with_value(RequestId(9));
    let (c1, _h1) = base.with_cancel();
    let (c2, _h2) = c1.with_timeout(HOUR);
    let (c3, _h3) = c2.with_deadline(std::time::Instant::now() + HOUR);
    let c4 = c3.without_cancel();
    let (c5, _h5) = c4.with_timeout_cause(HOUR, "cause");
    for ctx in [&c1, &c2, &c3, &c4, &c5] {
        assert_eq!(ctx.value::<RequestId>(), Some(&RequestId(9)), "{ctx:?}");
    }
}

#[test]
fn values_remain_readable_after_cancellation_and_timeout() {
    let base = Context::background().with_value(RequestId(3));
    let (cancelled, handle) = base.with_cancel();
    handle.cancel();
    assert_eq!(cancelled.value::<RequestId>(), Some(&RequestId(3)));
    let (timed_out, _h) = base.with_timeout(Duration::ZERO);
    assert!(timed_out.is_done());
    assert_eq!(timed_out.value::<RequestId>(), Some(&RequestId(3)));
}

#[test]
fn values_are_shared_by_clones_and_readable_from_other_threads() {
    let ctx = Context::background().with_value(RequestId(77));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let ctx = ctx.clone();
            thread::spawn(move || ctx.value::<RequestId>().map(|r| r.0))
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), Some(77));
    }
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| assert_eq!(ctx.value::<RequestId>(), Some(&RequestId(77))));
        }
    });
}

#[test]
fn merge_looks_in_the_first_chain_then_the_second() {
    let a = Context::background().with_value(RequestId(1));
    let b = Context::background()
        .with_value(User("from b"))
        .with_value(RequestId(2));
    let (m, _h) = a.merge(&b);
    assert_eq!(m.value::<RequestId>(), Some(&RequestId(1)));
    assert_eq!(m.value::<User>(), Some(&User("from b")));
    assert_eq!(m.value::<Missing>(), None);

    let (reversed, _h2) = b.merge(&a);
    assert_eq!(reversed.value::<RequestId>(), Some(&RequestId(2)));
}

#[test]
fn merge_searches_the_whole_first_chain_before_the_second() {
    // a's value is deep in a's chain; b's is right at b.
    let a_root = Context::background().with_value(RequestId(1));
    let (a1, _h1) = a_root.with_cancel();
    let a = a1.with_value(User("a")).with_value(5u8);
    let b = Context::background().with_value(RequestId(2));
    let (m, _h) = a.merge(&b);
    assert_eq!(m.value::<RequestId>(), Some(&RequestId(1)));
}

#[test]
fn values_below_a_merge_see_the_merged_chains() {
    let a = Context::background().with_value(User("a"));
    let b = Context::background().with_value(RequestId(2));
    let (m, _h) = a.merge(&b);
    let child = m.with_value(5u16);
    let (grandchild, _gh) = child.with_cancel();
    assert_eq!(grandchild.value::<User>(), Some(&User("a")));
    assert_eq!(grandchild.value::<RequestId>(), Some(&RequestId(2)));
    assert_eq!(grandchild.value::<u16>(), Some(&5));
}

#[test]
fn value_of_a_non_copy_type_is_returned_by_reference() {
    let ctx = Context::background().with_value(String::from("hello"));
    let s: &String = ctx.value::<String>().unwrap();
    assert_eq!(s, "hello");
    let v = Context::background().with_value(vec![1, 2, 3]);
    assert_eq!(v.value::<Vec<i32>>().map(Vec::len), Some(3));
}

// ---- prompt drops ----------------------------------------------------------

#[test]
fn value_is_dropped_when_the_only_context_is_dropped() {
    let (value, dropped) = DropCounter::new();
    let ctx = Context::background().with_value(value);
    assert_eq!(count(&dropped), 0);
    drop(ctx);
    assert_eq!(count(&dropped), 1);
}

#[test]
fn value_is_dropped_when_the_last_clone_is_dropped() {
    let (value, dropped) = DropCounter::new();
    let ctx = Context::background().with_value(value);
    let clone = ctx.clone();
    let clone2 = clone.clone();
    drop(ctx);
    drop(clone2);
    assert_eq!(count(&dropped), 0);
    drop(clone);
    assert_eq!(count(&dropped), 1);
}

#[test]
fn value_is_kept_while_a_descendant_lives_and_dropped_with_it() {
    let (value, dropped) = DropCounter::new();
    let ctx = Context::background().with_value(value);
    let (child, handle) = ctx.with_cancel();
    let grandchild = child.with_value(1u8);
    drop(ctx);
    drop(child);
    assert_eq!(count(&dropped), 0, "the grandchild can still reach it");
    assert!(grandchild.value::<DropCounter>().is_some());
    drop(grandchild);
    drop(handle);
    assert_eq!(count(&dropped), 1);
}

#[test]
fn dropped_value_child_of_a_live_parent_is_freed() {
    let (parent, _handle) = Context::background().with_cancel();
    let (value, dropped) = DropCounter::new();
    let child = parent.with_value(value);
    drop(child);
    assert_eq!(count(&dropped), 1);
    assert!(!parent.is_done());
}

#[test]
fn dropped_cancel_child_of_a_live_parent_is_freed_with_its_value() {
    let (parent, _handle) = Context::background().with_cancel();
    let (value, dropped) = DropCounter::new();
    let (child, child_handle) = parent.with_value(value).with_cancel();
    let (grandchild, grandchild_handle) = child.with_cancel();
    drop(child);
    drop(child_handle);
    drop(grandchild);
    drop(grandchild_handle);
    assert_eq!(count(&dropped), 1);
    // The parent still works normally afterwards.
    let (other, _h) = parent.with_cancel();
    assert!(!other.is_done());
}

#[test]
fn many_dropped_children_of_a_live_parent_are_all_freed() {
    let (parent, handle) = Context::background().with_cancel();
    let dropped = Arc::new(AtomicUsize::new(0));
    let n = if cfg!(miri) { 50 } else { 10_000 };
    for _ in 0..n {
        let (child, child_handle) = parent
            .with_value(DropCounter::with_counter(&dropped))
            .with_cancel();
        drop(child_handle);
        drop(child);
    }
    assert_eq!(count(&dropped), n);
    handle.cancel();
}

#[test]
fn dropped_deadline_child_of_a_live_parent_is_freed_with_its_value() {
    let (parent, _handle) = Context::background().with_cancel();
    let (value, dropped) = DropCounter::new();
    let (child, child_handle) = parent.with_value(value).with_timeout(HOUR);
    drop(child);
    drop(child_handle);
    assert_eq!(count(&dropped), 1, "a pending timer must not keep the node");
}

#[test]
fn dropped_deadline_child_is_freed_even_without_a_parent_handle() {
    let (value, dropped) = DropCounter::new();
    let (child, child_handle) = Context::background()
        .with_value(value)
        .with_deadline(std::time::Instant::now() + HOUR);
    drop(child_handle);
    drop(child);
    assert_eq!(count(&dropped), 1);
}

#[test]
fn dropped_without_cancel_child_of_a_live_parent_is_freed() {
    let (parent, _handle) = Context::background().with_cancel();
    let (value, dropped) = DropCounter::new();
    let (child, child_handle) = parent.without_cancel().with_value(value).with_cancel();
    drop(child);
    drop(child_handle);
    assert_eq!(count(&dropped), 1);
}

#[test]
fn dropped_merge_of_live_parents_is_freed_with_its_values() {
    let (a, _ha) = Context::background().with_cancel();
    let (b_parent, _hb) = Context::background().with_cancel();
    let (value, dropped) = DropCounter::new();
    let b = b_parent.with_value(value);
    let (m, mh) = a.merge(&b);
    drop(b);
    assert_eq!(count(&dropped), 0, "the merge can still reach it");
    assert!(m.value::<DropCounter>().is_some());
    drop(m);
    drop(mh);
    assert_eq!(count(&dropped), 1);
}

#[test]
fn dropped_cancelled_child_is_freed_with_its_value() {
    let (parent, handle) = Context::background().with_cancel();
    let (value, dropped) = DropCounter::new();
    let (child, child_handle) = parent.with_value(value).with_cancel();
    handle.cancel();
    assert!(child.is_done());
    drop(child);
    drop(child_handle);
    assert_eq!(count(&dropped), 1);
}

#[test]
fn dropped_child_with_a_pending_done_future_is_freed_when_the_future_is_dropped() {
    let (parent, _handle) = Context::background().with_cancel();
    let (value, dropped) = DropCounter::new();
    let (child, child_handle) = parent.with_value(value).with_cancel();
    let done = child.done();
    drop(child);
    drop(child_handle);
    drop(done);
    assert_eq!(count(&dropped), 1);
}

#[test]
fn shadowed_and_shadowing_values_are_both_dropped() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let ctx = Context::background()
        .with_value(DropCounter::with_counter(&dropped))
        .with_value(DropCounter::with_counter(&dropped));
    assert_eq!(count(&dropped), 0);
    drop(ctx);
    assert_eq!(count(&dropped), 2);
}

#[test]
fn value_is_dropped_when_the_last_context_is_dropped_on_another_thread() {
    let (value, dropped) = DropCounter::new();
    let ctx = Context::background().with_value(value);
    thread::spawn(move || drop(ctx)).join().unwrap();
    assert_eq!(count(&dropped), 1);
}

#[test]
fn cause_is_dropped_when_the_cancelled_child_of_a_live_parent_is_dropped() {
    let (parent, _handle) = Context::background().with_cancel();
    let (child, child_handle) = parent.with_cancel();
    let (grandchild, grandchild_handle) = child.with_cancel();
    let (cause, dropped) = DropCountingError::new();
    child_handle.cancel_with_cause(cause);
    assert!(grandchild.is_done());
    drop(child);
    drop(child_handle);
    assert_eq!(count(&dropped), 0, "the grandchild still shares the cause");
    drop(grandchild);
    drop(grandchild_handle);
    assert_eq!(count(&dropped), 1);
}

#[test]
fn cause_held_by_the_caller_outlives_the_context() {
    let (ctx, handle) = Context::background().with_cancel();
    let (cause, dropped) = DropCountingError::new();
    handle.cancel_with_cause(cause);
    let held = ctx.cause().unwrap();
    drop(ctx);
    drop(handle);
    assert_eq!(count(&dropped), 0);
    assert_eq!(held.to_string(), "drop-counting error");
    drop(held);
    assert_eq!(count(&dropped), 1);
}

#[test]
fn unused_deadline_cause_is_dropped_when_the_context_is_dropped() {
    let (parent, _handle) = Context::background().with_cancel();
    let (cause, dropped) = DropCountingError::new();
    let (ctx, handle) = parent.with_timeout_cause(HOUR, cause);
    drop(ctx);
    drop(handle);
    assert_eq!(count(&dropped), 1);
}

#[test]
fn unused_deadline_cause_is_dropped_when_cancelled_early_and_dropped() {
    let (cause, dropped) = DropCountingError::new();
    let (ctx, handle) = Context::background().with_timeout_cause(HOUR, cause);
    handle.cancel();
    drop(ctx);
    drop(handle);
    assert_eq!(count(&dropped), 1);
}
