//! The operations of a run and their decoding from fuzz bytes.

use super::MAX_OPS;

/// Where a derivation starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    Background,
    Todo,
    /// The n-th live slot (modulo the number of live slots).
    Slot(u8),
}

/// The deadline argument of a deadline derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineArg {
    /// `with_timeout(Duration::ZERO)`: done on creation.
    ZeroTimeout,
    /// `with_deadline(base - k s)`: in the past, done on creation.
    Past(u8),
    /// `with_deadline(base)`, `base` being the run's start: done on creation.
    AtBase,
    /// `with_timeout(Duration::MAX)`: unrepresentable, a plain child.
    MaxTimeout,
    /// `with_deadline(base + 100 years)`.
    Huge,
    /// `with_deadline(base + i64::MAX / 2 s)`: near `Instant`'s limit.
    Extreme,
    /// `with_deadline(base + 1 h + k s)`.
    Far(u8),
    /// `with_timeout(1_000_000 s)`.
    FarTimeout,
}

/// One step of a run. Slot and entry numbers are taken modulo the number
/// of live slots/entries; an op with nothing to act on is a no-op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    WithCancel(Parent),
    WithDeadline(Parent, DeadlineArg, bool),
    WithValue(Parent, u8),
    WithoutCancel(Parent),
    Merge(Parent, Parent),
    Cancel(u8),
    CancelWithCause(u8),
    /// `handle.clone().drop_guard()` dropped at once: cancels.
    GuardDrop(u8),
    /// `handle.clone().drop_guard().disarm()`: does not cancel.
    GuardDisarm(u8),
    /// `__private::fire_deadline`.
    FireDeadline(u8),
    DropCtx(u8),
    DropHandle(u8),
    AfterFunc(u8),
    StopAfterFunc(u8),
    DropAfterFunc(u8),
    NewDone(u8),
    PollDone(u8),
    DropDone(u8),
    /// `wait_timeout(Duration::ZERO)`, or `wait_deadline(base)` if the flag.
    WaitZero(u8, bool),
    /// `wait()` if the model says done, else `wait_timeout(1 µs)`.
    WaitIfDone(u8),
    Debug(u8),
}

fn parent(b: u8) -> Parent {
    match b % 18 {
        16 => Parent::Background,
        17 => Parent::Todo,
        n => Parent::Slot(n),
    }
}

fn deadline_arg(b: u8) -> DeadlineArg {
    let k = b >> 3;
    match b % 8 {
        0 => DeadlineArg::ZeroTimeout,
        1 => DeadlineArg::Past(k),
        2 => DeadlineArg::AtBase,
        3 => DeadlineArg::MaxTimeout,
        4 => DeadlineArg::Huge,
        5 => DeadlineArg::Extreme,
        6 => DeadlineArg::Far(k),
        _ => DeadlineArg::FarTimeout,
    }
}

impl Op {
    /// Decodes one op from the front of `input`; `None` at the end.
    pub fn decode(input: &mut &[u8]) -> Option<Op> {
        let mut next = || -> Option<u8> {
            let (&b, rest) = input.split_first()?;
            *input = rest;
            Some(b)
        };
        let code = next()?;
        let a = next().unwrap_or(0);
        Some(match code % 24 {
            0 | 1 => Op::WithCancel(parent(a)),
            2 => {
                let b = next().unwrap_or(0);
                Op::WithDeadline(parent(a), deadline_arg(b), code & 0x80 != 0)
            }
            3 => Op::WithValue(parent(a), code >> 6),
            4 => Op::WithoutCancel(parent(a)),
            5 | 6 => Op::Merge(parent(a), parent(next().unwrap_or(0))),
            7 | 8 => Op::Cancel(a),
            9 => Op::CancelWithCause(a),
            10 => Op::GuardDrop(a),
            11 => Op::GuardDisarm(a),
            12 => Op::FireDeadline(a),
            13 => Op::DropCtx(a),
            14 => Op::DropHandle(a),
            15 => Op::AfterFunc(a),
            16 => Op::StopAfterFunc(a),
            17 => Op::DropAfterFunc(a),
            18 => Op::NewDone(a),
            19 => Op::PollDone(a),
            20 => Op::DropDone(a),
            21 => Op::WaitZero(a, code & 0x80 != 0),
            22 => Op::WaitIfDone(a),
            _ => Op::Debug(a),
        })
    }

    /// Decodes a whole input (at most [`MAX_OPS`] ops).
    pub fn decode_all(mut input: &[u8]) -> Vec<Op> {
        let mut ops = Vec::new();
        while ops.len() < MAX_OPS {
            match Op::decode(&mut input) {
                Some(op) => ops.push(op),
                None => break,
            }
        }
        ops
    }
}
