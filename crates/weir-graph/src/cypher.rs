//! Cypher generation. Only validated, back-quoted identifiers go into statement text; every
//! value travels as a parameter (`$rows`).

use crate::ident::Ident;
use crate::mapping::{EndMapping, Mapping, NodeMapping, RelMapping};

/// The guard of a versioned statement on the entity `var`: true when its stored version is
/// missing or not newer than the row's `v` (equal versions apply, so a redelivered record is
/// harmless).
fn version_guard(var: &str, prop: &Ident) -> String {
    format!("{var}.{prop} IS NULL OR {var}.{prop} <= row.v")
}

/// `{`k`: row.k0, ...}`: a node mapping's key pattern.
fn node_key(n: &NodeMapping) -> String {
    let keys: Vec<String> = n
        .key_properties()
        .enumerate()
        .map(|(i, p)| format!("{}: row.k{i}", p.name))
        .collect();
    format!("{{{}}}", keys.join(", "))
}

/// `UNWIND $rows AS row MERGE (n:`L` {`k`: row.k0, ...}) SET n += row.p`.
///
/// Each row is a map `{k0: .., k1: .., p: {..}}`: the key values by position and the other
/// properties. When the mapping is versioned ([`NodeMapping::version`], here `_version`), a
/// row also carries its version `v`, and a node holding a newer one is left as it is:
/// `... MERGE (n:`L` {..}) WITH n, row WHERE n.`_version` IS NULL OR n.`_version` <= row.v
/// SET n += row.p, n.`_version` = row.v`. A statement has at most one row per key (the
/// writer merges a batch's records per key): ArcadeDB evaluates the `WHERE` of every row
/// before any row's `SET`, so a later row of one key would not see an earlier one's version.
pub fn node_merge(n: &NodeMapping) -> String {
    let head = format!("UNWIND $rows AS row MERGE (n:{} {})", n.label, node_key(n));
    match &n.version {
        None => format!("{head} SET n += row.p"),
        Some(v) => format!(
            "{head} WITH n, row WHERE {} SET n += row.p, n.{v} = row.v",
            version_guard("n", v)
        ),
    }
}

fn end_pattern(var: &str, prefix: &str, e: &EndMapping) -> String {
    let keys: Vec<String> = e
        .key
        .iter()
        .enumerate()
        .map(|(i, (name, _, _))| format!("{name}: row.{prefix}{i}"))
        .collect();
    format!("({var}:{} {{{}}})", e.label, keys.join(", "))
}

/// `UNWIND $rows AS row MERGE (a:..) MERGE (b:..) MERGE (a)-[r:`T`]->(b) SET r += row.p`.
///
/// End points are merged by key (created with only their key when they do not exist yet), so
/// a relationship never depends on the order in which batches commit; a node record that
/// arrives later fills in its properties. Rows are `{s0.., e0.., p: {..}}`. Versioned
/// ([`RelMapping::version`]) as [`node_merge`] on `r`, with `v` in each row: `... MERGE
/// (a)-[r:`T`]->(b) WITH r, row WHERE r.`_version` IS NULL OR r.`_version` <= row.v SET r +=
/// row.p, r.`_version` = row.v`; the end nodes' versions are not touched.
pub fn rel_merge(r: &RelMapping) -> String {
    let head = format!(
        "UNWIND $rows AS row MERGE {} MERGE {} MERGE (a)-[r:{}]->(b)",
        end_pattern("a", "s", &r.start),
        end_pattern("b", "e", &r.end),
        r.rel_type
    );
    match &r.version {
        None => format!("{head} SET r += row.p"),
        Some(v) => format!(
            "{head} WITH r, row WHERE {} SET r += row.p, r.{v} = row.v",
            version_guard("r", v)
        ),
    }
}

/// `UNWIND $rows AS row MATCH (n:`L` {`k`: row.k0, ...}) DETACH DELETE n`: rows as in
/// [`node_merge`], without `p`. A key that matches nothing deletes nothing. Versioned, a node
/// holding a newer version than the row's `v` stays: `... MATCH (n:`L` {..}) WHERE
/// n.`_version` IS NULL OR n.`_version` <= row.v DETACH DELETE n`.
pub fn node_delete(n: &NodeMapping) -> String {
    let guard = match &n.version {
        None => String::new(),
        Some(v) => format!(" WHERE {}", version_guard("n", v)),
    };
    format!(
        "UNWIND $rows AS row MATCH (n:{} {}){guard} DETACH DELETE n",
        n.label,
        node_key(n)
    )
}

/// `UNWIND $rows AS row MATCH (a:..)-[r:`T`]->(b:..) DELETE r`: rows as in [`rel_merge`],
/// without `p`; the end nodes stay. Versioned, guarded like [`node_delete`] on `r`.
pub fn rel_delete(r: &RelMapping) -> String {
    let guard = match &r.version {
        None => String::new(),
        Some(v) => format!(" WHERE {}", version_guard("r", v)),
    };
    format!(
        "UNWIND $rows AS row MATCH {}-[r:{}]->{}{guard} DELETE r",
        end_pattern("a", "s", &r.start),
        r.rel_type,
        end_pattern("b", "e", &r.end),
    )
}

/// The key schema a mapping needs: one entry per distinct (label, key properties).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeySchema {
    /// The label.
    pub label: Ident,
    /// Key property names, in key order.
    pub keys: Vec<Ident>,
}

impl KeySchema {
    /// A stable, valid constraint/index name for this key.
    pub fn name(&self, suffix: &str) -> String {
        let keys: Vec<&str> = self.keys.iter().map(Ident::as_str).collect();
        let mut s = format!("weir_{}_{}_{suffix}", self.label.as_str(), keys.join("_"));
        s.truncate(crate::ident::MAX_IDENTIFIER_LEN);
        s
    }

    fn props(&self) -> String {
        let p: Vec<String> = self.keys.iter().map(|k| format!("n.{k}")).collect();
        if p.len() == 1 {
            p[0].clone()
        } else {
            format!("({})", p.join(", "))
        }
    }

    /// `CREATE CONSTRAINT `name` IF NOT EXISTS FOR (n:`L`) REQUIRE n.`k` IS UNIQUE` (valid
    /// Neo4j 5 Cypher; composite keys as `(n.a, n.b)`).
    pub fn constraint(&self) -> String {
        format!(
            "CREATE CONSTRAINT `{}` IF NOT EXISTS FOR (n:{}) REQUIRE {} IS UNIQUE",
            self.name("key"),
            self.label,
            self.props()
        )
    }

    /// `CREATE INDEX `name` IF NOT EXISTS FOR (n:`L`) ON (n.`k`, ...)`: the fallback when a
    /// server refuses the constraint.
    pub fn index(&self) -> String {
        let p: Vec<String> = self.keys.iter().map(|k| format!("n.{k}")).collect();
        format!(
            "CREATE INDEX `{}` IF NOT EXISTS FOR (n:{}) ON ({})",
            self.name("idx"),
            self.label,
            p.join(", ")
        )
    }
}

/// Every key schema the mapping needs: its nodes' keys and its relationships' end points.
pub fn key_schemas(m: &Mapping) -> Vec<KeySchema> {
    let mut out: Vec<KeySchema> = m
        .nodes
        .iter()
        .map(|n| KeySchema {
            label: n.label.clone(),
            keys: n.key_properties().map(|p| p.name.clone()).collect(),
        })
        .collect();
    for r in &m.relationships {
        for e in [&r.start, &r.end] {
            if m.nodes.iter().any(|n| n.label == e.label) {
                continue;
            }
            out.push(KeySchema {
                label: e.label.clone(),
                keys: e.key.iter().map(|k| k.0.clone()).collect(),
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = r#"
[[nodes]]
label = "Person"
key = ["id"]
properties = [{ name = "id", type = "int" }, { name = "name" }]

[[nodes]]
label = "Pair"
key = ["a", "b"]
properties = [{ name = "a" }, { name = "b" }]

[[relationships]]
type = "KNOWS"
start = { label = "Person", key = { id = "id" } }
end = { label = "City", key = { name = "city" } }
"#;

    #[test]
    fn statements_hold_only_quoted_identifiers_and_parameters() {
        let m = Mapping::parse(M, "m").unwrap();
        assert_eq!(
            node_merge(&m.nodes[0]),
            "UNWIND $rows AS row MERGE (n:`Person` {`id`: row.k0}) SET n += row.p"
        );
        assert_eq!(
            node_merge(&m.nodes[1]),
            "UNWIND $rows AS row MERGE (n:`Pair` {`a`: row.k0, `b`: row.k1}) SET n += row.p"
        );
        assert_eq!(
            rel_merge(&m.relationships[0]),
            "UNWIND $rows AS row MERGE (a:`Person` {`id`: row.s0}) MERGE (b:`City` {`name`: row.e0}) \
             MERGE (a)-[r:`KNOWS`]->(b) SET r += row.p"
        );
    }

    #[test]
    fn unversioned_deletes_match_by_key_only() {
        let m = Mapping::parse(M, "m").unwrap();
        assert_eq!(
            node_delete(&m.nodes[1]),
            "UNWIND $rows AS row MATCH (n:`Pair` {`a`: row.k0, `b`: row.k1}) DETACH DELETE n"
        );
        assert_eq!(
            rel_delete(&m.relationships[0]),
            "UNWIND $rows AS row MATCH (a:`Person` {`id`: row.s0})-[r:`KNOWS`]->(b:`City` {`name`: row.e0}) \
             DELETE r"
        );
    }

    #[test]
    fn versioned_statements_are_guarded_by_the_stored_version() {
        let m = Mapping::parse(&format!("[input]\nversion_field = \"ts\"\n{M}"), "m").unwrap();
        assert_eq!(
            node_merge(&m.nodes[0]),
            "UNWIND $rows AS row MERGE (n:`Person` {`id`: row.k0}) WITH n, row \
             WHERE n.`_version` IS NULL OR n.`_version` <= row.v SET n += row.p, n.`_version` = row.v"
        );
        assert_eq!(
            rel_merge(&m.relationships[0]),
            "UNWIND $rows AS row MERGE (a:`Person` {`id`: row.s0}) MERGE (b:`City` {`name`: row.e0}) \
             MERGE (a)-[r:`KNOWS`]->(b) WITH r, row WHERE r.`_version` IS NULL OR r.`_version` <= row.v \
             SET r += row.p, r.`_version` = row.v"
        );
        assert_eq!(
            node_delete(&m.nodes[1]),
            "UNWIND $rows AS row MATCH (n:`Pair` {`a`: row.k0, `b`: row.k1}) \
             WHERE n.`_version` IS NULL OR n.`_version` <= row.v DETACH DELETE n"
        );
        assert_eq!(
            rel_delete(&m.relationships[0]),
            "UNWIND $rows AS row MATCH (a:`Person` {`id`: row.s0})-[r:`KNOWS`]->(b:`City` {`name`: row.e0}) \
             WHERE r.`_version` IS NULL OR r.`_version` <= row.v DELETE r"
        );
        let m = Mapping::parse(
            &format!("[input]\nversion_field = \"ts\"\nversion_property = \"seq\"\n{M}"),
            "m",
        )
        .unwrap();
        assert!(
            node_merge(&m.nodes[0]).ends_with(
                "WHERE n.`seq` IS NULL OR n.`seq` <= row.v SET n += row.p, n.`seq` = row.v"
            ),
            "{}",
            node_merge(&m.nodes[0])
        );
    }

    #[test]
    fn schema_covers_nodes_and_unmapped_end_points() {
        let m = Mapping::parse(M, "m").unwrap();
        let s = key_schemas(&m);
        let labels: Vec<&str> = s.iter().map(|k| k.label.as_str()).collect();
        assert_eq!(labels, vec!["City", "Pair", "Person"]);
        assert_eq!(
            s[2].constraint(),
            "CREATE CONSTRAINT `weir_Person_id_key` IF NOT EXISTS FOR (n:`Person`) REQUIRE n.`id` IS UNIQUE"
        );
        assert_eq!(
            s[1].constraint(),
            "CREATE CONSTRAINT `weir_Pair_a_b_key` IF NOT EXISTS FOR (n:`Pair`) REQUIRE (n.`a`, n.`b`) IS UNIQUE"
        );
        assert_eq!(
            s[1].index(),
            "CREATE INDEX `weir_Pair_a_b_idx` IF NOT EXISTS FOR (n:`Pair`) ON (n.`a`, n.`b`)"
        );
    }
}
