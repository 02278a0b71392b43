//! Canonical keys: the key text change events carry.

use crate::ident::Ident;
use crate::value::Value;

/// The canonical key text of key values (`"42"`, or `a=1,b=x` for composite keys).
pub fn canonical_key<'a>(names: impl Iterator<Item = &'a Ident>, values: &[Value]) -> String {
    let mut out = String::new();
    if values.len() == 1 {
        values[0].write_canonical(&mut out);
        return out;
    }
    for (i, (n, v)) in names.zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(n.as_str());
        out.push('=');
        v.write_canonical(&mut out);
    }
    out
}
