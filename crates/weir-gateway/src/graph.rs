//! Reading the graph for `Query`: a small trait, implemented on `neo4rs::Graph`.

use async_trait::async_trait;
use serde::Serialize;

use crate::GatewayError;

/// A label, relationship type or property name checked to be letters, digits and `_` (not
/// starting with a digit, at most 128 bytes), so it can be placed in Cypher in backticks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    /// Checks `s`; `what` names it in the error (`label`, `type`, `property`).
    pub fn new(what: &'static str, s: &str) -> Result<Self, GatewayError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !s.as_bytes()[0].is_ascii_digit();
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(GatewayError::InvalidIdentifier {
                what,
                value: s.chars().take(64).collect(),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name in backticks, for Cypher.
    fn quoted(&self) -> String {
        format!("`{}`", self.0)
    }
}

/// Which way relationships are followed from the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `(n)-[r]->(m)`.
    Outgoing,
    /// `(n)<-[r]-(m)`.
    Incoming,
    /// Either way.
    Both,
}

/// A node as the gateway returns it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GraphNode {
    /// The database's id (opaque; large numbers on some servers).
    pub id: i64,
    /// Its labels.
    pub labels: Vec<String>,
    /// Its properties.
    pub properties: serde_json::Value,
}

/// One neighbour found from a node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Neighbour {
    /// The relationship's id; the page cursor.
    pub relationship_id: i64,
    /// The relationship type.
    pub relationship_type: String,
    /// Whether the relationship points away from the start node.
    pub outgoing: bool,
    /// The node at the other end.
    pub node: GraphNode,
}

/// Where to find the start node: label, key property and key value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeKey {
    /// The label.
    pub label: Ident,
    /// The key property.
    pub property: Ident,
    /// The key value as text; it also matches an integer property when it parses as one.
    pub value: String,
}

/// A page of neighbours: relationships with ids above `after`, at most `limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourQuery {
    /// The start node.
    pub node: NodeKey,
    /// Only this relationship type, if set.
    pub relationship_type: Option<Ident>,
    /// Direction.
    pub direction: Direction,
    /// Cursor: the last relationship id of the previous page.
    pub after: Option<i64>,
    /// Page size.
    pub limit: usize,
}

/// What `Query` needs from the graph.
#[async_trait]
pub trait GraphReader: Send + Sync + 'static {
    /// The node with this key, if any.
    async fn node(&self, key: &NodeKey) -> Result<Option<GraphNode>, GatewayError>;
    /// Neighbours of a node, ordered by relationship id, at most `limit`.
    async fn neighbours(&self, q: &NeighbourQuery) -> Result<Vec<Neighbour>, GatewayError>;
    /// How many nodes carry `label`.
    async fn count(&self, label: &Ident) -> Result<i64, GatewayError>;
    /// Whether the graph answers (for `/ready`).
    async fn ready(&self) -> bool;
}

fn key_params(q: neo4rs::Query, key: &NodeKey) -> neo4rs::Query {
    let int = key.value.parse::<i64>().ok();
    q.param("key", key.value.as_str()).param("keyInt", int)
}

fn match_node(key: &NodeKey) -> String {
    format!(
        "MATCH (n:{}) WHERE n.{p} = $key OR n.{p} = $keyInt",
        key.label.quoted(),
        p = key.property.quoted()
    )
}

fn internal(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Graph(e.to_string())
}

fn node_from(row: &neo4rs::Row, prefix: &str) -> Result<GraphNode, GatewayError> {
    let get = |k: &str| format!("{prefix}{k}");
    Ok(GraphNode {
        id: row.get::<i64>(&get("id")).map_err(internal)?,
        labels: row.get::<Vec<String>>(&get("labels")).map_err(internal)?,
        properties: row
            .get::<serde_json::Value>(&get("props"))
            .map_err(internal)?,
    })
}

fn node_query(key: &NodeKey) -> neo4rs::Query {
    let cypher = format!(
        "{} RETURN id(n) AS id, labels(n) AS labels, properties(n) AS props LIMIT 1",
        match_node(key)
    );
    key_params(neo4rs::query(&cypher), key)
}

fn neighbours_query(q: &NeighbourQuery) -> neo4rs::Query {
    let rel = match &q.relationship_type {
        Some(t) => format!("[r:{}]", t.quoted()),
        None => "[r]".to_owned(),
    };
    let pattern = match q.direction {
        Direction::Outgoing => format!("(n)-{rel}->(m)"),
        Direction::Incoming => format!("(n)<-{rel}-(m)"),
        Direction::Both => format!("(n)-{rel}-(m)"),
    };
    let cypher = format!(
        "{} WITH n LIMIT 1 MATCH {pattern} WHERE $after IS NULL OR id(r) > $after \
         RETURN id(r) AS rid, type(r) AS rtype, id(startNode(r)) = id(n) AS outgoing, \
         id(m) AS mid, labels(m) AS mlabels, properties(m) AS mprops \
         ORDER BY rid LIMIT $limit",
        match_node(&q.node)
    );
    key_params(neo4rs::query(&cypher), &q.node)
        .param("after", q.after)
        .param("limit", q.limit as i64)
}

fn count_query(label: &Ident) -> neo4rs::Query {
    neo4rs::query(&format!(
        "MATCH (n:{}) RETURN count(n) AS c",
        label.quoted()
    ))
}

fn neighbour_from(row: &neo4rs::Row) -> Result<Neighbour, GatewayError> {
    Ok(Neighbour {
        relationship_id: row.get::<i64>("rid").map_err(internal)?,
        relationship_type: row.get::<String>("rtype").map_err(internal)?,
        outgoing: row.get::<bool>("outgoing").map_err(internal)?,
        node: node_from(row, "m")?,
    })
}

fn count_from(row: Option<&neo4rs::Row>) -> Result<i64, GatewayError> {
    match row {
        Some(row) => row.get::<i64>("c").map_err(internal),
        None => Ok(0),
    }
}

/// Reads through a bare neo4rs `Graph` (its own internal pool).
#[async_trait]
impl GraphReader for neo4rs::Graph {
    async fn node(&self, key: &NodeKey) -> Result<Option<GraphNode>, GatewayError> {
        let mut rows = self.execute(node_query(key)).await.map_err(internal)?;
        match rows.next().await.map_err(internal)? {
            Some(row) => Ok(Some(node_from(&row, "")?)),
            None => Ok(None),
        }
    }

    async fn neighbours(&self, q: &NeighbourQuery) -> Result<Vec<Neighbour>, GatewayError> {
        let mut rows = self.execute(neighbours_query(q)).await.map_err(internal)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(internal)? {
            out.push(neighbour_from(&row)?);
        }
        Ok(out)
    }

    async fn count(&self, label: &Ident) -> Result<i64, GatewayError> {
        let mut rows = self.execute(count_query(label)).await.map_err(internal)?;
        count_from(rows.next().await.map_err(internal)?.as_ref())
    }

    async fn ready(&self) -> bool {
        let probe = async {
            let mut rows = self.execute(neo4rs::query("RETURN 1 AS x")).await.ok()?;
            rows.next().await.ok()?
        };
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(3), probe).await,
            Ok(Some(_))
        )
    }
}

/// Reads through Weir's bounded session pool (timeouts, readiness gating and circuit breaker
/// come from the pool). Results are bounded by the queries' `LIMIT`s.
#[async_trait]
impl GraphReader for weir_pool::Pool {
    async fn node(&self, key: &NodeKey) -> Result<Option<GraphNode>, GatewayError> {
        let rows = self.execute(node_query(key)).await.map_err(internal)?;
        rows.first().map(|r| node_from(r, "")).transpose()
    }

    async fn neighbours(&self, q: &NeighbourQuery) -> Result<Vec<Neighbour>, GatewayError> {
        let rows = self.execute(neighbours_query(q)).await.map_err(internal)?;
        rows.iter().map(neighbour_from).collect()
    }

    async fn count(&self, label: &Ident) -> Result<i64, GatewayError> {
        let rows = self.execute(count_query(label)).await.map_err(internal)?;
        count_from(rows.first())
    }

    async fn ready(&self) -> bool {
        weir_pool::Pool::ready(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_validated() {
        assert!(Ident::new("label", "Person_2").is_ok());
        for bad in ["", "2x", "a-b", "a`b", "a b", "n) DETACH DELETE n //", "é"] {
            match Ident::new("label", bad) {
                Err(GatewayError::InvalidIdentifier { what: "label", .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(Ident::new("label", &"a".repeat(129)).is_err());
    }
}
