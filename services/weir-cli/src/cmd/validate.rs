//! `weir validate`: check a mapping file and show what it will write.

use std::path::PathBuf;

use clap::Args;
use weir_graph::{Mapping, cypher};

/// Arguments of `weir validate`.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// The mapping file (TOML).
    #[arg(long, short)]
    mapping: PathBuf,
    /// Prefix every label and relationship type (as `weir ingest --label-prefix` does).
    #[arg(long, default_value = "")]
    label_prefix: String,
    /// Also print the Cypher statements and key schema the mapping produces.
    #[arg(long)]
    cypher: bool,
}

/// Runs `weir validate`: exit 0 when the mapping is valid, 1 (with `file:line: field:
/// message` on stderr) when it is not.
pub(crate) fn run(args: ValidateArgs) -> anyhow::Result<u8> {
    let mapping = match Mapping::from_path(&args.mapping) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("invalid mapping: {e}");
            return Ok(super::EXIT_FATAL);
        }
    };
    let mapping = match mapping.with_label_prefix(&args.label_prefix) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("invalid --label-prefix: {e}");
            return Ok(super::EXIT_FATAL);
        }
    };
    println!(
        "{}: ok ({} node mapping(s), {} relationship mapping(s))",
        args.mapping.display(),
        mapping.nodes.len(),
        mapping.relationships.len()
    );
    for n in &mapping.nodes {
        let keys: Vec<&str> = n.key_properties().map(|p| p.name.as_str()).collect();
        let props: Vec<String> = n
            .properties
            .iter()
            .map(|p| format!("{}: {} <- {}", p.name.as_str(), p.ty, p.field))
            .collect();
        println!(
            "  node {} key ({}) properties [{}]",
            n.label.as_str(),
            keys.join(", "),
            props.join(", ")
        );
    }
    for r in &mapping.relationships {
        println!(
            "  relationship (:{})-[:{}]->(:{})",
            r.start.label.as_str(),
            r.rel_type.as_str(),
            r.end.label.as_str()
        );
    }
    if args.cypher {
        println!("schema:");
        for k in cypher::key_schemas(&mapping) {
            println!("  {}", k.constraint());
        }
        println!("statements:");
        for n in &mapping.nodes {
            println!("  {}", cypher::node_merge(n));
        }
        for r in &mapping.relationships {
            println!("  {}", cypher::rel_merge(r));
        }
    }
    Ok(0)
}
