//! A bounded ring of samples: the oldest is dropped when a new one arrives at capacity.

use std::collections::VecDeque;

/// A ring holding at most `capacity` items.
#[derive(Clone, Debug)]
pub struct History<T> {
    items: VecDeque<T>,
    capacity: usize,
    dropped: u64,
}

impl<T> History<T> {
    /// An empty ring of `capacity` items (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            items: VecDeque::with_capacity(capacity),
            capacity,
            dropped: 0,
        }
    }

    /// Adds an item, dropping the oldest when full.
    pub fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(item);
    }

    /// Items held now.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many items were dropped to keep the bound.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter()
    }

    /// The newest item.
    pub fn last(&self) -> Option<&T> {
        self.items.back()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity_and_keeps_the_newest() {
        let mut h = History::new(1000);
        for i in 0..5000u32 {
            h.push(i);
            assert!(h.len() <= 1000);
        }
        assert_eq!(h.len(), 1000);
        assert_eq!(h.dropped(), 4000);
        assert_eq!(h.iter().next(), Some(&4000));
        assert_eq!(h.last(), Some(&4999));
    }

    #[test]
    fn zero_capacity_is_raised_to_one() {
        let mut h = History::new(0);
        h.push(1);
        h.push(2);
        assert_eq!(h.capacity(), 1);
        assert_eq!(h.iter().copied().collect::<Vec<_>>(), vec![2]);
    }
}
