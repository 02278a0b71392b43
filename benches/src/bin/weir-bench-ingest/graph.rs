//! Counting what a run created and deleting it again, by label prefix.

use anyhow::Context as _;
use neo4rs::{Graph, Query};

/// Nodes and relationships found under one prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    /// `Person` + `Company` nodes.
    pub(crate) nodes: u64,
    /// `WORKS_AT` + `KNOWS` relationships.
    pub(crate) rels: u64,
}

/// Node labels and relationship types of the people mapping (unprefixed).
const LABELS: [&str; 2] = ["Person", "Company"];
const TYPES: [&str; 2] = ["WORKS_AT", "KNOWS"];

/// Rows deleted per transaction (ArcadeDB cannot delete a million nodes in one).
const DELETE_SLICE: u64 = 5000;

async fn one_count(graph: &Graph, q: String) -> anyhow::Result<u64> {
    let mut rows = graph
        .execute(Query::new(q.clone()))
        .await
        .context(q.clone())?;
    let row = rows.next().await.context(q.clone())?;
    let c: i64 = row
        .with_context(|| format!("{q}: no row"))?
        .get("c")
        .with_context(|| format!("{q}: no column c"))?;
    Ok(c.max(0) as u64)
}

/// Counts the nodes and relationships under `prefix` with Cypher.
pub(crate) async fn count(graph: &Graph, prefix: &str) -> anyhow::Result<Counts> {
    let mut c = Counts::default();
    for l in LABELS {
        c.nodes += one_count(
            graph,
            format!("MATCH (n:`{prefix}{l}`) RETURN count(n) AS c"),
        )
        .await?;
    }
    for t in TYPES {
        c.rels += one_count(
            graph,
            format!("MATCH ()-[r:`{prefix}{t}`]->() RETURN count(r) AS c"),
        )
        .await?;
    }
    Ok(c)
}

/// Deletes everything under `prefix`: relationships, then nodes, in slices of 5000 per
/// transaction.
pub(crate) async fn delete_all(graph: &Graph, prefix: &str) -> anyhow::Result<()> {
    for t in TYPES {
        let q = format!(
            "MATCH ()-[r:`{prefix}{t}`]->() WITH r LIMIT {DELETE_SLICE} DELETE r RETURN count(*) AS c"
        );
        while one_count(graph, q.clone()).await? > 0 {}
    }
    for l in LABELS {
        let q = format!(
            "MATCH (n:`{prefix}{l}`) WITH n LIMIT {DELETE_SLICE} DETACH DELETE n RETURN count(*) AS c"
        );
        while one_count(graph, q.clone()).await? > 0 {}
    }
    let left = count(graph, prefix).await?;
    anyhow::ensure!(
        left == Counts::default(),
        "cleanup of `{prefix}` left {left:?}"
    );
    Ok(())
}

/// Drops the key constraints created for `prefix` (best effort: the reason is returned when the
/// server refuses).
pub(crate) async fn drop_constraints(graph: &Graph, names: &[String]) -> Result<(), String> {
    for n in names {
        graph
            .run(Query::new(format!("DROP CONSTRAINT `{n}` IF EXISTS")))
            .await
            .map_err(|e| format!("DROP CONSTRAINT `{n}`: {e}"))?;
    }
    Ok(())
}
