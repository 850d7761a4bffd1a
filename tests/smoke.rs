use ctxtree::*;
use std::time::{Duration, Instant};

#[test]
fn smoke() {
    let root = Context::background();
    let (a, ca) = root.with_cancel();
    let v = a.with_value(5u32);
    let (b, _cb) = v.with_cancel();
    let (c, _cc) = b.with_timeout(Duration::from_secs(30));
    assert_eq!(c.value::<u32>(), Some(&5));
    assert!(!c.is_done());
    ca.cancel_with_cause("bye");
    assert!(c.is_done());
    assert_eq!(c.err(), Err(Error::Canceled));
    assert_eq!(c.cause().unwrap().to_string(), "bye");
    assert!(std::sync::Arc::ptr_eq(
        &c.cause().unwrap(),
        &a.cause().unwrap()
    ));
    println!("{c:?}");
    let (d, _) = root.with_timeout(Duration::from_millis(20));
    let t = Instant::now();
    assert_eq!(d.wait(), Error::DeadlineExceeded);
    println!("waited {:?}", t.elapsed());
    assert_eq!(ctxtree::__private::armed_timers(), 0); // c cancelled (disarmed), d fired
}

#[test]
fn deep_chain() {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let (root, cancel) = Context::background().with_cancel();
            let mut ctx = root.clone();
            let mut handles = Vec::new();
            for _ in 0..1_000_000 {
                let (c, h) = ctx.with_cancel();
                ctx = c;
                handles.push(h);
            }
            cancel.cancel();
            assert!(ctx.is_done());
            drop(handles);
            drop(ctx);
        })
        .unwrap()
        .join()
        .unwrap();
}
