//! Weir's graph side: the mapping file (records to nodes and relationships), identifier
//! validation, Cypher generation, the key schema, and the [`GraphWriter`] that writes mapped
//! batches with parameterised `UNWIND $rows AS row MERGE ...` statements and publishes one
//! [`weir_events::ChangeBatch`] per committed batch through a [`ChangePublisher`].
//!
//! ```
//! let m = weir_graph::Mapping::parse(r#"
//! [[nodes]]
//! label = "Person"
//! key = ["id"]
//! properties = [{ name = "id", type = "int" }, { name = "name" }]
//! "#, "inline.toml").unwrap();
//! assert_eq!(
//!     weir_graph::cypher::node_merge(&m.nodes[0]),
//!     "UNWIND $rows AS row MERGE (n:`Person` {`id`: row.k0}) SET n += row.p"
//! );
//! ```

pub mod cypher;
pub mod error;
pub mod ident;
pub mod mapping;
pub mod publish;
pub mod sink;
pub mod value;
pub mod writer;

pub use error::GraphError;
pub use ident::{Ident, IdentError};
pub use mapping::{
    HeaderError, InputFormat, MappedRecord, Mapping, MappingError, Record, RecordError,
};
pub use publish::{ChangePublisher, MemoryPublisher, NoopPublisher, PublishError};
pub use sink::{GraphMapper, GraphSink};
pub use value::{FieldRef, Value};
pub use writer::{
    Batch, CypherExecutor, GraphWriter, IsolatedOutcome, PreparedBatch, RecordRef, WriteOutcome,
    WriterConfig,
};
