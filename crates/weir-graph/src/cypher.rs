//! Cypher generation. Only validated, back-quoted identifiers go into statement text; every
//! value travels as a parameter (`$rows`).

use crate::ident::Ident;
use crate::mapping::{EndMapping, Mapping, NodeMapping, RelMapping};

/// `UNWIND $rows AS row MERGE (n:`L` {`k`: row.k0, ...}) SET n += row.p`.
///
/// Each row is a map `{k0: .., k1: .., p: {..}}`: the key values by position and the other
/// properties.
pub fn node_merge(n: &NodeMapping) -> String {
    let keys: Vec<String> = n
        .key_properties()
        .enumerate()
        .map(|(i, p)| format!("{}: row.k{i}", p.name))
        .collect();
    format!(
        "UNWIND $rows AS row MERGE (n:{} {{{}}}) SET n += row.p",
        n.label,
        keys.join(", ")
    )
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
/// arrives later fills in its properties. Rows are `{s0.., e0.., p: {..}}`.
pub fn rel_merge(r: &RelMapping) -> String {
    format!(
        "UNWIND $rows AS row MERGE {} MERGE {} MERGE (a)-[r:{}]->(b) SET r += row.p",
        end_pattern("a", "s", &r.start),
        end_pattern("b", "e", &r.end),
        r.rel_type
    )
}

/// `UNWIND $rows AS row MATCH (n:`L` {`k`: row.k0, ...}) DETACH DELETE n`: rows as in
/// [`node_merge`], without `p`. A key that matches nothing deletes nothing.
pub fn node_delete(n: &NodeMapping) -> String {
    let keys: Vec<String> = n
        .key_properties()
        .enumerate()
        .map(|(i, p)| format!("{}: row.k{i}", p.name))
        .collect();
    format!(
        "UNWIND $rows AS row MATCH (n:{} {{{}}}) DETACH DELETE n",
        n.label,
        keys.join(", ")
    )
}

/// `UNWIND $rows AS row MATCH (a:..)-[r:`T`]->(b:..) DELETE r`: rows as in [`rel_merge`],
/// without `p`; the end nodes stay.
pub fn rel_delete(r: &RelMapping) -> String {
    format!(
        "UNWIND $rows AS row MATCH {}-[r:{}]->{} DELETE r",
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
