//! Which change events a subscription wants, and the index that finds the filters an event
//! may match without scanning every subscription.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use weir_events::{ChangeEvent, EntityKind, Operation};

/// Which change events a subscription wants. Empty lists mean "any".
///
/// `labels` select node events by label, `types` relationship events by type; with both empty
/// every node and relationship matches. `keys` and `operations` further narrow (exact match on
/// [`ChangeEvent::key`] and [`ChangeEvent::operation`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChangeFilter {
    /// Node labels.
    pub labels: Vec<String>,
    /// Relationship types.
    pub types: Vec<String>,
    /// Keys in canonical form.
    pub keys: Vec<String>,
    /// Operations.
    pub operations: Vec<Operation>,
}

impl ChangeFilter {
    /// Whether `event` passes this filter.
    pub fn matches(&self, event: &ChangeEvent) -> bool {
        let by_label = match event.kind {
            EntityKind::Node => &self.labels,
            EntityKind::Relationship => &self.types,
        };
        let label_ok =
            (self.labels.is_empty() && self.types.is_empty()) || by_label.contains(&event.label);
        label_ok
            && (self.keys.is_empty() || self.keys.contains(&event.key))
            && (self.operations.is_empty() || self.operations.contains(&event.operation))
    }

    /// The same filter with every list sorted and without repeats, so that filters asking for
    /// the same events compare equal (and share one evaluation per event).
    pub fn normalized(mut self) -> Self {
        for v in [&mut self.labels, &mut self.types, &mut self.keys] {
            v.sort_unstable();
            v.dedup();
        }
        self.operations.sort_unstable_by_key(|o| *o as u8);
        self.operations.dedup();
        self
    }

    fn index_keys(&self) -> impl Iterator<Item = (EntityKind, &str)> {
        self.labels
            .iter()
            .map(|l| (EntityKind::Node, l.as_str()))
            .chain(
                self.types
                    .iter()
                    .map(|t| (EntityKind::Relationship, t.as_str())),
            )
    }

    fn is_wildcard(&self) -> bool {
        self.labels.is_empty() && self.types.is_empty()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        let strings = |v: &Vec<String>| {
            v.capacity() * std::mem::size_of::<String>()
                + v.iter().map(String::capacity).sum::<usize>()
        };
        strings(&self.labels)
            + strings(&self.types)
            + strings(&self.keys)
            + self.operations.capacity() * std::mem::size_of::<Operation>()
    }
}

/// Id of a distinct filter in a [`FilterIndex`].
pub(crate) type FilterId = u64;

/// The distinct filters of live subscriptions, each evaluated once per event whatever the
/// number of subscriptions sharing it, found through an index: by (node label | relationship
/// type), and for a filter that names keys, by (label | type, key), so that an event visits only
/// the filters listing its key, never every narrow filter of its label (a thousand filters of 99
/// keys each cost one lookup per event, not 99,000 string comparisons). Filters with neither
/// labels nor types are in a separate "everything" set, or indexed by key when they name keys.
#[derive(Default)]
pub(crate) struct FilterIndex {
    ids: HashMap<Arc<ChangeFilter>, FilterId>,
    filters: HashMap<FilterId, (Arc<ChangeFilter>, usize)>,
    /// Filters without keys: by kind (0 nodes, 1 relationships), then label/type.
    by_label: [HashMap<String, HashSet<FilterId>>; 2],
    /// Filters with keys: by kind, then label/type, then key.
    by_label_key: [HashMap<String, HashMap<String, HashSet<FilterId>>>; 2],
    /// Filters with neither labels nor types, nor keys.
    wildcard: HashSet<FilterId>,
    /// Filters with neither labels nor types, with keys: by key.
    wildcard_by_key: HashMap<String, HashSet<FilterId>>,
    next: FilterId,
}

pub(crate) fn kind_idx(kind: EntityKind) -> usize {
    match kind {
        EntityKind::Node => 0,
        EntityKind::Relationship => 1,
    }
}

/// Removes `id` from `map[key]`, and the entry once it is empty.
fn unindex(map: &mut HashMap<String, HashSet<FilterId>>, key: &str, id: FilterId) {
    if let Some(set) = map.get_mut(key) {
        set.remove(&id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl FilterIndex {
    /// Adds one user of `filter` (normalized); returns its id.
    pub(crate) fn add(&mut self, filter: &ChangeFilter) -> FilterId {
        if let Some(&id) = self.ids.get(filter) {
            if let Some((_, users)) = self.filters.get_mut(&id) {
                *users += 1;
            }
            return id;
        }
        self.next += 1;
        let id = self.next;
        let f = Arc::new(filter.clone());
        match (f.is_wildcard(), f.keys.is_empty()) {
            (true, true) => {
                self.wildcard.insert(id);
            }
            (true, false) => {
                for key in &f.keys {
                    self.wildcard_by_key
                        .entry(key.clone())
                        .or_default()
                        .insert(id);
                }
            }
            (false, true) => {
                for (kind, label) in f.index_keys() {
                    self.by_label[kind_idx(kind)]
                        .entry(label.to_owned())
                        .or_default()
                        .insert(id);
                }
            }
            (false, false) => {
                for (kind, label) in f.index_keys() {
                    let by_key = self.by_label_key[kind_idx(kind)]
                        .entry(label.to_owned())
                        .or_default();
                    for key in &f.keys {
                        by_key.entry(key.clone()).or_default().insert(id);
                    }
                }
            }
        }
        self.ids.insert(f.clone(), id);
        self.filters.insert(id, (f, 1));
        id
    }

    /// Removes one user of filter `id`; the filter goes when its last user does.
    pub(crate) fn remove(&mut self, id: FilterId) {
        let Some((f, users)) = self.filters.get_mut(&id) else {
            return;
        };
        *users -= 1;
        if *users > 0 {
            return;
        }
        let f = f.clone();
        self.filters.remove(&id);
        self.ids.remove(&f);
        match (f.is_wildcard(), f.keys.is_empty()) {
            (true, true) => {
                self.wildcard.remove(&id);
            }
            (true, false) => {
                for key in &f.keys {
                    unindex(&mut self.wildcard_by_key, key, id);
                }
            }
            (false, true) => {
                for (kind, label) in f.index_keys() {
                    unindex(&mut self.by_label[kind_idx(kind)], label, id);
                }
            }
            (false, false) => {
                for (kind, label) in f.index_keys() {
                    let map = &mut self.by_label_key[kind_idx(kind)];
                    if let Some(by_key) = map.get_mut(label) {
                        for key in &f.keys {
                            unindex(by_key, key, id);
                        }
                        if by_key.is_empty() {
                            map.remove(label);
                        }
                    }
                }
            }
        }
        if self.filters.is_empty() {
            self.ids.shrink_to_fit();
            self.filters.shrink_to_fit();
            self.by_label.iter_mut().for_each(HashMap::shrink_to_fit);
            self.by_label_key
                .iter_mut()
                .for_each(HashMap::shrink_to_fit);
            self.wildcard.shrink_to_fit();
            self.wildcard_by_key.shrink_to_fit();
        }
    }

    /// Calls `f(id)` for every filter `event` passes, each once.
    pub(crate) fn matching(&self, event: &ChangeEvent, mut f: impl FnMut(FilterId)) {
        let k = kind_idx(event.kind);
        let label = event.label.as_str();
        let key = event.key.as_str();
        let unkeyed = self.by_label[k].get(label);
        let keyed = self.by_label_key[k].get(label).and_then(|m| m.get(key));
        let any_label_keyed = self.wildcard_by_key.get(key);
        // Each filter is in exactly one of the four, under this event's (kind, label, key) at
        // most once: no id is visited twice.
        let candidates = unkeyed
            .into_iter()
            .flatten()
            .chain(keyed.into_iter().flatten())
            .chain(any_label_keyed.into_iter().flatten())
            .chain(self.wildcard.iter());
        for id in candidates {
            if let Some((filter, _)) = self.filters.get(id)
                && filter.matches(event)
            {
                f(*id);
            }
        }
    }

    /// Distinct filters.
    pub(crate) fn len(&self) -> usize {
        self.filters.len()
    }

    /// Entries in the index: label/type entries (with and without keys) and the (label/type,
    /// key) and key entries under them.
    pub(crate) fn index_keys(&self) -> usize {
        self.by_label.iter().map(HashMap::len).sum::<usize>()
            + self
                .by_label_key
                .iter()
                .flat_map(HashMap::values)
                .map(|m| 1 + m.len())
                .sum::<usize>()
            + self.wildcard_by_key.len()
    }

    /// Filters with neither labels nor types (with or without keys).
    pub(crate) fn wildcards(&self) -> usize {
        self.filters
            .values()
            .filter(|(f, _)| f.is_wildcard())
            .count()
    }

    /// Estimated bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let mut held = 0;
        for (f, _) in self.filters.values() {
            held += size_of::<ChangeFilter>() + f.heap_bytes() + 3 * size_of::<FilterId>() + 32;
        }
        let entry = |k: &String, set: &HashSet<FilterId>| {
            size_of::<String>() + k.capacity() + set.capacity() * size_of::<FilterId>()
        };
        for (k, set) in self.by_label.iter().flatten() {
            held += entry(k, set);
        }
        for (label, by_key) in self.by_label_key.iter().flatten() {
            held += size_of::<String>() + label.capacity();
            held += by_key.iter().map(|(k, set)| entry(k, set)).sum::<usize>();
        }
        held += self
            .wildcard_by_key
            .iter()
            .map(|(k, set)| entry(k, set))
            .sum::<usize>();
        held + self.wildcard.capacity() * size_of::<FilterId>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_events::fixture::event;

    fn filter(labels: &[&str], keys: &[&str]) -> ChangeFilter {
        ChangeFilter {
            labels: labels.iter().map(|s| (*s).to_owned()).collect(),
            keys: keys.iter().map(|s| (*s).to_owned()).collect(),
            ..ChangeFilter::default()
        }
        .normalized()
    }

    fn matching(ix: &FilterIndex, label: &str, key: &str) -> Vec<FilterId> {
        let mut out = Vec::new();
        ix.matching(
            &event(EntityKind::Node, label, key, Operation::Created),
            |id| out.push(id),
        );
        out.sort_unstable();
        out
    }

    #[test]
    fn keyed_filters_are_found_by_key_and_leave_nothing_behind() {
        let mut ix = FilterIndex::default();
        // A thousand narrow filters of 99 keys each, like the feed bench's subscribers.
        let narrow: Vec<FilterId> = (0..1000)
            .map(|i| {
                let keys: Vec<String> = (0..99).map(|j| format!("p{}", i * 99 + j)).collect();
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                ix.add(&filter(&["Person"], &keys))
            })
            .collect();
        let wide = ix.add(&filter(&["Person"], &[]));
        let any_label = ix.add(&filter(&[], &["p5"]));
        let everything = ix.add(&filter(&[], &[]));
        let other_label = ix.add(&filter(&["Company"], &["p5"]));
        assert_eq!(
            matching(&ix, "Person", "p5"),
            [narrow[0], wide, any_label, everything]
        );
        assert_eq!(
            matching(&ix, "Person", "p990"),
            [narrow[10], wide, everything]
        );
        assert_eq!(
            matching(&ix, "Company", "p5"),
            [any_label, everything, other_label]
        );
        assert_eq!(matching(&ix, "Person", "nobody"), [wide, everything]);
        // Relationship events never see node filters.
        let mut rel = Vec::new();
        ix.matching(
            &event(EntityKind::Relationship, "Person", "p5", Operation::Created),
            |id| rel.push(id),
        );
        rel.sort_unstable();
        assert_eq!(rel, [any_label, everything]);
        // A second user of the same filter shares it; the index empties when all are gone.
        assert_eq!(
            ix.add(&filter(&["Person"], &["p1", "p0"])),
            ix.add(&filter(&["Person"], &["p0", "p1"]))
        );
        assert!(ix.heap_bytes() > 1000 * 99 * 2);
        let shared = ix.add(&filter(&["Person"], &["p0", "p1"]));
        for _ in 0..3 {
            ix.remove(shared);
        }
        for id in narrow
            .into_iter()
            .chain([wide, any_label, everything, other_label])
        {
            ix.remove(id);
        }
        assert_eq!((ix.len(), ix.index_keys(), ix.wildcards()), (0, 0, 0));
        assert_eq!(ix.heap_bytes(), 0);
    }
}
