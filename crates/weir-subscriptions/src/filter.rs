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
/// number of subscriptions sharing it, found through an index by (node label | relationship
/// type); filters with neither are kept in a separate "everything" set.
#[derive(Default)]
pub(crate) struct FilterIndex {
    ids: HashMap<Arc<ChangeFilter>, FilterId>,
    filters: HashMap<FilterId, (Arc<ChangeFilter>, usize)>,
    /// By kind (0 nodes, 1 relationships), then label/type.
    by_label: [HashMap<String, HashSet<FilterId>>; 2],
    wildcard: HashSet<FilterId>,
    next: FilterId,
}

pub(crate) fn kind_idx(kind: EntityKind) -> usize {
    match kind {
        EntityKind::Node => 0,
        EntityKind::Relationship => 1,
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
        if f.is_wildcard() {
            self.wildcard.insert(id);
        } else {
            for (kind, label) in f.index_keys() {
                self.by_label[kind_idx(kind)]
                    .entry(label.to_owned())
                    .or_default()
                    .insert(id);
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
        if f.is_wildcard() {
            self.wildcard.remove(&id);
        } else {
            for (kind, label) in f.index_keys() {
                let map = &mut self.by_label[kind_idx(kind)];
                if let Some(set) = map.get_mut(label) {
                    set.remove(&id);
                    if set.is_empty() {
                        map.remove(label);
                    }
                }
            }
        }
        if self.filters.is_empty() {
            self.ids.shrink_to_fit();
            self.filters.shrink_to_fit();
            self.by_label.iter_mut().for_each(HashMap::shrink_to_fit);
            self.wildcard.shrink_to_fit();
        }
    }

    /// Calls `f(id)` for every filter `event` passes.
    pub(crate) fn matching(&self, event: &ChangeEvent, mut f: impl FnMut(FilterId)) {
        let indexed = self.by_label[kind_idx(event.kind)].get(event.label.as_str());
        for id in indexed.into_iter().flatten().chain(self.wildcard.iter()) {
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

    /// Keys in the label/type index.
    pub(crate) fn index_keys(&self) -> usize {
        self.by_label.iter().map(HashMap::len).sum()
    }

    /// Filters in the "everything" set.
    pub(crate) fn wildcards(&self) -> usize {
        self.wildcard.len()
    }

    /// Estimated bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let mut held = 0;
        for (f, _) in self.filters.values() {
            held += size_of::<ChangeFilter>() + f.heap_bytes() + 3 * size_of::<FilterId>() + 32;
        }
        for (k, set) in self.by_label.iter().flatten() {
            held += size_of::<String>() + k.capacity() + set.capacity() * size_of::<FilterId>();
        }
        held + self.wildcard.capacity() * size_of::<FilterId>()
    }
}
