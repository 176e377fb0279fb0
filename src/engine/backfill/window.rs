//! Bounded `_id` windows for the scan of ObjectId `_id`s.
//!
//! Some servers evaluate a query's whole result before they return its first document, `limit`
//! included (the test server does: a cursor over the `_id`s of 100,000 documents takes 0.6 s to
//! return its first one). One cursor over the whole collection then stalls the start of a run
//! for as long as reading every `_id` takes, during which no batch is written. A query over a
//! bounded `_id` range costs what the range holds, so the scan reads the ObjectId bracket (the
//! common `_id`) in windows, each sized from what the ones before it held. On MongoDB, whose
//! cursors are lazy, it costs one short query per window instead of a `getMore`.
//!
//! ObjectIds are read as 96-bit unsigned integers (their bytes, big-endian), which orders them
//! as the server does. A window is `(last, last + width]`; where that passes the largest
//! ObjectId, the window is open-ended and the bracket ends with it.

use mongodb::bson::{doc, oid::ObjectId, Document};

/// The largest ObjectId as an integer.
const SPACE_MAX: u128 = (1 << 96) - 1;
/// The first window's width when no window has been measured yet: small enough to hold few
/// documents however dense the ids, and it grows sixteenfold for each empty window.
const START_WIDTH: u128 = 1 << 12;
/// A window is at most this many times wider or narrower than the one before it, so one
/// window of unusual density does not throw the next far off.
const STEP: u128 = 16;

/// An ObjectId as the integer its bytes spell, big-endian.
pub(super) fn to_int(id: &ObjectId) -> u128 {
    id.bytes()
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

/// The ObjectId whose bytes spell `v` (at most 96 bits).
pub(super) fn from_int(v: u128) -> ObjectId {
    let mut bytes = [0u8; 12];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (v >> (8 * (11 - i))) as u8;
    }
    ObjectId::from_bytes(bytes)
}

/// One window: the `_id` condition to query, and its inclusive end (`None` when open-ended).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Window {
    pub filter: Document,
    pub hi: Option<u128>,
    /// Where the window starts (inclusive), for measuring it.
    lo: u128,
    /// Whether what it holds says anything about the density after it (the window up to the
    /// pivot does not: its start is the bottom of the space, not the last `_id` read).
    measured: bool,
}

/// The width of the next window, learnt from the windows before it.
#[derive(Debug, Clone)]
pub(super) struct Windows {
    width: u128,
    /// An `_id` near the smallest one (the first in natural order, which is insertion order on
    /// most collections), where the first window ends; without one the windows start from the
    /// smallest ObjectId and widen until they find documents.
    pivot: Option<u128>,
}

impl Windows {
    pub(super) fn new(pivot: Option<u128>) -> Self {
        Windows {
            width: START_WIDTH,
            pivot,
        }
    }

    /// The window after `last` (exclusive), or from the bottom of the bracket.
    pub(super) fn next(&self, last: Option<u128>) -> Window {
        let (lo, hi, measured) = match (last, self.pivot) {
            (Some(last), _) => (
                last.saturating_add(1),
                last.checked_add(self.width).filter(|hi| *hi < SPACE_MAX),
                true,
            ),
            (None, Some(pivot)) => (0, Some(pivot), false),
            (None, None) => (0, Some(self.width - 1), true),
        };
        let mut bounds = match last {
            Some(last) => doc! { "$gt": from_int(last) },
            None => doc! { "$gte": from_int(0) },
        };
        if let Some(hi) = hi {
            bounds.insert("$lte", from_int(hi));
        }
        Window {
            filter: doc! { "_id": bounds },
            hi,
            lo,
            measured,
        }
    }

    /// Learns from `window`, which held `found` documents (`last_found` the last of them), or
    /// more when `truncated` (only `found` were read); the next window aims at `target`.
    pub(super) fn observe(
        &mut self,
        window: &Window,
        found: usize,
        last_found: Option<u128>,
        truncated: bool,
        target: usize,
    ) {
        if !window.measured {
            return;
        }
        let span = match (truncated, last_found, window.hi) {
            (true, Some(last), _) => last.saturating_sub(window.lo) + 1,
            (false, _, Some(hi)) => hi - window.lo + 1,
            // An open-ended window that was read whole ends the bracket.
            _ => return,
        };
        let wanted = if found == 0 {
            self.width.saturating_mul(STEP)
        } else {
            span.saturating_mul(target.max(1) as u128) / found as u128
        };
        self.width = wanted.clamp(
            (self.width / STEP).max(1),
            self.width.saturating_mul(STEP).min(SPACE_MAX),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_map_to_integers_in_server_order() {
        let a = ObjectId::parse_str("65000000750dd70000000001").unwrap();
        let b = ObjectId::parse_str("65000000750dd70000000100").unwrap();
        let c = ObjectId::parse_str("65000001000000000000000f").unwrap();
        assert!(to_int(&a) < to_int(&b) && to_int(&b) < to_int(&c));
        for id in [a, b, c, from_int(0), from_int(SPACE_MAX)] {
            assert_eq!(from_int(to_int(&id)), id);
        }
        assert_eq!(to_int(&b) - to_int(&a), 0xff);
    }

    #[test]
    fn the_first_window_ends_at_the_pivot() {
        let w = Windows::new(Some(1000)).next(None);
        assert_eq!(
            w.filter,
            doc! { "_id": { "$gte": from_int(0), "$lte": from_int(1000) } }
        );
        assert_eq!(w.hi, Some(1000));
    }

    #[test]
    fn windows_follow_the_last_id_and_size_themselves_to_the_target() {
        let mut windows = Windows::new(None);
        let w = windows.next(Some(99));
        assert_eq!(
            w.filter,
            doc! { "_id": { "$gt": from_int(99), "$lte": from_int(99 + START_WIDTH) } }
        );
        // Every id taken: the next window is as wide as `target` ids.
        windows.observe(
            &w,
            START_WIDTH as usize,
            Some(99 + START_WIDTH),
            false,
            2000,
        );
        assert_eq!(windows.width, 2000);
        // Half as dense: twice as wide.
        let w = windows.next(Some(5000));
        windows.observe(&w, 1000, Some(7000), false, 2000);
        assert_eq!(windows.width, 4000);
    }

    #[test]
    fn empty_windows_widen_and_dense_ones_narrow_by_a_bounded_step() {
        let mut windows = Windows::new(None);
        let w = windows.next(Some(0));
        windows.observe(&w, 0, None, false, 2000);
        assert_eq!(windows.width, START_WIDTH * STEP);
        // Truncated after 4000 ids in 10 units: far denser than the target, but at most 16
        // times narrower.
        let w = windows.next(Some(0));
        windows.observe(&w, 4000, Some(10), true, 2000);
        assert_eq!(windows.width, START_WIDTH);
    }

    #[test]
    fn a_window_past_the_largest_object_id_is_open_ended() {
        let mut windows = Windows::new(None);
        windows.width = SPACE_MAX;
        let w = windows.next(Some(SPACE_MAX - 10));
        assert_eq!(w.hi, None);
        assert_eq!(
            w.filter,
            doc! { "_id": { "$gt": from_int(SPACE_MAX - 10) } }
        );
        // Read whole, it ends the bracket and teaches nothing.
        windows.observe(&w, 3, Some(SPACE_MAX), false, 2000);
        assert_eq!(windows.width, SPACE_MAX);
    }

    #[test]
    fn the_window_up_to_the_pivot_teaches_nothing() {
        let mut windows = Windows::new(Some(1 << 90));
        let w = windows.next(None);
        windows.observe(&w, 1, Some(1 << 90), false, 2000);
        assert_eq!(windows.width, START_WIDTH);
    }
}
