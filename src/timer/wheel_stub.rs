//! Temporary stand-in.
use std::collections::BTreeMap;
use std::time::Instant;
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct TimerId(u64);
impl TimerId {
    pub(crate) const NONE_BITS: u64 = u64::MAX;
    pub(crate) fn to_bits(self) -> u64 { self.0 }
    pub(crate) fn from_bits(bits: u64) -> Option<TimerId> { (bits != Self::NONE_BITS).then_some(TimerId(bits)) }
}
pub(crate) struct Wheel<T> { map: BTreeMap<(Instant, u64), T>, ids: BTreeMap<u64, Instant>, next: u64 }
impl<T> Wheel<T> {
    pub(crate) fn new(_origin: Instant) -> Self { Wheel { map: BTreeMap::new(), ids: BTreeMap::new(), next: 0 } }
    pub(crate) fn insert(&mut self, when: Instant, value: T) -> TimerId { let id = self.next; self.next += 1; self.map.insert((when, id), value); self.ids.insert(id, when); TimerId(id) }
    pub(crate) fn remove(&mut self, id: TimerId) -> Option<T> { let when = self.ids.remove(&id.0)?; self.map.remove(&(when, id.0)) }
    pub(crate) fn poll_expired(&mut self, now: Instant, out: &mut Vec<T>) { while let Some(e) = self.map.first_entry() { if e.key().0 > now { break } let ((_, id), v) = e.remove_entry(); self.ids.remove(&id); out.push(v); } }
    pub(crate) fn next_expiry(&self) -> Option<Instant> { self.map.keys().next().map(|k| k.0) }
    pub(crate) fn len(&self) -> usize { self.map.len() }
}
