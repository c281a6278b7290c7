//! [`Queue`]: the first-in, first-out queue behind a connection's output
//! chunks and its events (and, in the `wshub` server, a connection's
//! outbound and inbound messages and waiting readers), holding one item
//! without allocating.
//!
//! Most of the time a connection's queues hold at most one item: the ping
//! of a heartbeat, the pong that answers it, one reply, one decoded message.
//! A `VecDeque` allocates room for four on its first push and keeps that
//! room, so every connection that ever saw a ping carried two allocations it
//! no longer used (288 bytes of the 2,759 an idle connection took). A
//! `Queue` keeps a single item inline and only allocates a `VecDeque` for a
//! second one; [`Queue::release`] frees a drained `VecDeque`.

use std::collections::VecDeque;
use std::mem;

/// A FIFO queue that holds a single item inline.
///
/// ```
/// use wshub_proto::queue::Queue;
/// let mut q = Queue::new();
/// q.push_back("ping");
/// q.push_back("reply");
/// assert_eq!(q.pop_front(), Some("ping"));
/// assert_eq!(q.into_iter().collect::<Vec<_>>(), ["reply"]);
/// ```
#[derive(Debug, Default)]
pub enum Queue<T> {
    /// Nothing queued, nothing allocated.
    #[default]
    Empty,
    /// One item, inline.
    One(T),
    /// Two or more items, or a drained deque kept for the next burst.
    Many(VecDeque<T>),
}

impl<T> Queue<T> {
    /// An empty queue (no allocation).
    pub const fn new() -> Self {
        Queue::Empty
    }

    /// Appends `item`.
    pub fn push_back(&mut self, item: T) {
        if let Queue::Many(q) = self {
            q.push_back(item);
            return;
        }
        *self = match mem::take(self) {
            Queue::Empty => Queue::One(item),
            Queue::One(first) => {
                let mut q = VecDeque::with_capacity(4);
                q.push_back(first);
                q.push_back(item);
                Queue::Many(q)
            }
            Queue::Many(mut q) => {
                q.push_back(item);
                Queue::Many(q)
            }
        };
    }

    /// Removes and returns the first item.
    pub fn pop_front(&mut self) -> Option<T> {
        match self {
            Queue::Empty => None,
            Queue::Many(q) => q.pop_front(),
            Queue::One(_) => match mem::take(self) {
                Queue::One(item) => Some(item),
                _ => None,
            },
        }
    }

    /// The first item.
    pub fn front_mut(&mut self) -> Option<&mut T> {
        match self {
            Queue::Empty => None,
            Queue::One(item) => Some(item),
            Queue::Many(q) => q.front_mut(),
        }
    }

    /// The items, first to last.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        let (one, many) = match self {
            Queue::Empty => (None, None),
            Queue::One(item) => (Some(item), None),
            Queue::Many(q) => (None, Some(q.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Removes and returns the item at `index` (0 is the first).
    pub fn remove(&mut self, index: usize) -> Option<T> {
        match self {
            Queue::Many(q) => q.remove(index),
            Queue::One(_) if index == 0 => self.pop_front(),
            _ => None,
        }
    }

    /// Drops every item and frees the deque, if any.
    pub fn clear(&mut self) {
        *self = Queue::Empty;
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        match self {
            Queue::Empty => true,
            Queue::One(_) => false,
            Queue::Many(q) => q.is_empty(),
        }
    }

    /// Frees the deque of a drained queue if it has room for more than
    /// `keep` items (`0`: whatever its size). A busy connection keeps a small
    /// deque between bursts; an idle one gives it back.
    pub fn release(&mut self, keep: usize) {
        if matches!(self, Queue::Many(q) if q.is_empty() && q.capacity() > keep) {
            *self = Queue::Empty;
        }
    }

    /// Bytes allocated on the heap (not counting what the items own).
    pub fn heap_size(&self) -> usize {
        match self {
            Queue::Many(q) => q.capacity() * mem::size_of::<T>(),
            _ => 0,
        }
    }
}

/// The items of a [`Queue`], first to last, by value.
#[derive(Debug)]
pub struct IntoIter<T> {
    one: Option<T>,
    many: Option<std::collections::vec_deque::IntoIter<T>>,
}

impl<T> Iterator for IntoIter<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.one
            .take()
            .or_else(|| self.many.as_mut().and_then(Iterator::next))
    }
}

impl<T> IntoIterator for Queue<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;

    fn into_iter(self) -> IntoIter<T> {
        match self {
            Queue::Empty => IntoIter {
                one: None,
                many: None,
            },
            Queue::One(item) => IntoIter {
                one: Some(item),
                many: None,
            },
            Queue::Many(q) => IntoIter {
                one: None,
                many: Some(q.into_iter()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut Queue<u32>) -> Vec<u32> {
        std::iter::from_fn(|| q.pop_front()).collect()
    }

    #[test]
    fn one_item_allocates_nothing() {
        let mut q = Queue::new();
        assert!(q.is_empty());
        q.push_back(7);
        assert!(!q.is_empty());
        assert_eq!(q.heap_size(), 0);
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), [7]);
        assert_eq!(q.pop_front(), Some(7));
        assert!(q.is_empty());
        assert_eq!(q.pop_front(), None);
    }

    #[test]
    fn order_is_kept_across_every_shape() {
        let mut q = Queue::new();
        q.push_back(1);
        q.push_back(2);
        q.push_back(3);
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(q.pop_front(), Some(1));
        q.push_back(4);
        *q.front_mut().unwrap() = 20;
        assert_eq!(drain(&mut q), [20, 3, 4]);
        // Drained, the deque stays for the next burst until released.
        assert!(q.is_empty());
        assert!(q.heap_size() > 0);
        q.push_back(5);
        q.push_back(6);
        assert_eq!(drain(&mut q), [5, 6]);
    }

    #[test]
    fn remove_and_into_iter_keep_the_order() {
        let mut q = Queue::new();
        q.push_back(1);
        assert_eq!(q.remove(1), None);
        assert_eq!(q.remove(0), Some(1));
        assert!(q.is_empty());
        for i in 1..=5 {
            q.push_back(i);
        }
        assert_eq!(q.remove(2), Some(3));
        assert_eq!(q.into_iter().collect::<Vec<_>>(), [1, 2, 4, 5]);
        let mut one = Queue::new();
        one.push_back(9);
        assert_eq!(one.into_iter().collect::<Vec<_>>(), [9]);
        assert_eq!(Queue::<u8>::new().into_iter().count(), 0);
        let mut q = Queue::new();
        q.push_back(1);
        q.push_back(2);
        q.clear();
        assert!(q.is_empty());
        assert_eq!(q.heap_size(), 0);
    }

    #[test]
    fn release_frees_only_a_drained_deque_above_the_bound() {
        let mut q = Queue::new();
        for i in 0..100 {
            q.push_back(i);
        }
        q.release(0);
        assert_eq!(
            q.iter().count(),
            100,
            "a queue with items is never released"
        );
        drain(&mut q);
        q.release(1000);
        assert!(q.heap_size() > 0, "kept: within the bound");
        q.release(64);
        assert_eq!(q.heap_size(), 0);
        assert!(q.is_empty());
        q.push_back(1);
        q.release(0);
        assert_eq!(drain(&mut q), [1], "an inline item is never released");
    }
}
