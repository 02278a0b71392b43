//! Label prefixes: every label and relationship type of a mapping under one prefix.

use super::Mapping;
use crate::ident::Ident;

impl Mapping {
    /// Prefixes every label and relationship type with `prefix` (validated), e.g. to keep
    /// test or tenant data apart.
    pub fn with_label_prefix(mut self, prefix: &str) -> Result<Self, crate::ident::IdentError> {
        if prefix.is_empty() {
            return Ok(self);
        }
        let p = |id: &Ident| Ident::new(&format!("{prefix}{}", id.as_str()));
        for n in &mut self.nodes {
            n.label = p(&n.label)?;
        }
        for r in &mut self.relationships {
            r.rel_type = p(&r.rel_type)?;
            r.start.label = p(&r.start.label)?;
            r.end.label = p(&r.end.label)?;
        }
        Ok(self)
    }
}
