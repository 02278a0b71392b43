//! The committed SDL (`schemas/gateway.graphql`) matches the schema the code builds.
//! Regenerate with `WEIR_UPDATE_SDL=1 cargo nextest run -p weir-gateway --test sdl_drift`.

use std::path::PathBuf;

#[test]
fn committed_sdl_matches_the_schema() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/gateway.graphql");
    let current = weir_gateway::sdl();
    if std::env::var_os("WEIR_UPDATE_SDL").is_some() {
        std::fs::write(&path, &current).unwrap();
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        committed == current,
        "schemas/gateway.graphql drifted from the schema; regenerate it with \
         WEIR_UPDATE_SDL=1 cargo nextest run -p weir-gateway --test sdl_drift\n--- current ---\n{current}"
    );
    assert!(current.contains("graphChanges(") && current.contains("ingestProgress("));
}
