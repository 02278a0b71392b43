//! Embeds the prebuilt web assets: writes `$OUT_DIR/assets.rs`, a table of every file under
//! `assets/` (path relative to it, `include_bytes!` of its absolute path), sorted by path.
//! The assets are committed, so building needs no npm (`npm run build` rewrites them).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let assets = root.join("assets");
    println!("cargo:rerun-if-changed=assets");
    let mut files = Vec::new();
    walk(&assets, &mut files);
    let mut table = String::from("&[\n");
    for f in &files {
        let rel = f
            .strip_prefix(&assets)
            .expect("inside assets/")
            .to_str()
            .expect("asset paths are UTF-8")
            .replace('\\', "/");
        writeln!(
            table,
            "    ({rel:?}, include_bytes!({:?}) as &[u8]),",
            f.to_str().expect("UTF-8 path")
        )
        .expect("write to a String");
    }
    table.push(']');
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("assets.rs");
    std::fs::write(&out, table).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
