//! Results files with one generated section per bench and preset between markers, so
//! hand-written text around them (and the other presets' sections) survives a re-run.

/// Replaces the section `bench:name` (between `<!-- BENCH:NAME -->` and `<!-- /BENCH:NAME -->`)
/// in `doc` with `body`, or appends it.
pub fn replace_section(doc: &str, bench: &str, name: &str, body: &str) -> String {
    let open = format!("<!-- {bench}:{name} -->");
    let close = format!("<!-- /{bench}:{name} -->");
    let block = format!("{open}\n{}\n{close}", body.trim_end());
    if let Some(a) = doc.find(&open)
        && let Some(b) = doc[a..].find(&close)
    {
        let end = a + b + close.len();
        return format!("{}{block}{}", &doc[..a], &doc[end..]);
    }
    let mut out = doc.trim_end().to_owned();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(&block);
    out.push('\n');
    out
}

/// Writes `body` as section `bench:name` of the file at `path` (created when missing).
pub fn write_section(
    path: &std::path::Path,
    bench: &str,
    name: &str,
    body: &str,
) -> std::io::Result<()> {
    let doc = match std::fs::read_to_string(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    std::fs::write(path, replace_section(&doc, bench, name, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place_or_appended() {
        let doc = "# Ingest\n\nintro\n";
        let a = replace_section(doc, "b", "quick", "| a |\n");
        assert_eq!(
            a,
            "# Ingest\n\nintro\n\n<!-- b:quick -->\n| a |\n<!-- /b:quick -->\n"
        );
        let b = replace_section(&format!("{a}\nafter\n"), "b", "quick", "| b |");
        assert!(b.contains("| b |") && !b.contains("| a |"), "{b}");
        assert!(
            b.starts_with("# Ingest\n\nintro\n") && b.ends_with("\nafter\n"),
            "{b}"
        );
        let c = replace_section(&b, "b", "full", "F");
        assert!(c.contains("| b |") && c.ends_with("<!-- /b:full -->\n"));
        assert_eq!(replace_section(&c, "b", "full", "F"), c);
        // Another bench's section of the same name is not touched.
        let d = replace_section(&c, "other", "full", "G");
        assert!(d.contains("\nF\n") && d.contains("\nG\n"), "{d}");
        assert!(replace_section("", "x", "y", "z").starts_with("<!-- x:y -->"));
    }

    #[test]
    fn a_missing_file_is_created_and_other_sections_kept() {
        let dir = std::env::temp_dir().join(format!("weir-sections-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("r.md");
        let _ = std::fs::remove_file(&p);
        write_section(&p, "f", "full", "FULL").unwrap();
        write_section(&p, "f", "quick", "QUICK 1").unwrap();
        write_section(&p, "f", "quick", "QUICK 2").unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(
            s.contains("FULL") && s.contains("QUICK 2") && !s.contains("QUICK 1"),
            "{s}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
