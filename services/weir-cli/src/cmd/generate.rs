//! `weir generate`: a deterministic synthetic people/companies dataset of any size, streamed
//! in constant memory. Matches `examples/people/mapping.toml`.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use weir_stream::InputFormat;

/// Arguments of `weir generate`.
#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// Number of people (records); companies are one per 50 people (at least 1).
    #[arg(long, default_value_t = 1000)]
    people: u64,
    /// Seed: the same seed and size give byte-identical output.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: InputFormat,
    /// Add a `note` column of this many filler bytes to every row (wide records, for memory
    /// and throughput tests; the example mapping ignores it).
    #[arg(long, default_value_t = 0)]
    pad: usize,
    /// Output file; `-` (the default) is stdout.
    #[arg(long, short, default_value = "-")]
    out: PathBuf,
}

const FIRST: [&str; 16] = [
    "Ada", "Ben", "Chloe", "Dev", "Ema", "Femi", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena", "Mo",
    "Noor", "Omar", "Pia",
];
const LAST: [&str; 16] = [
    "Abe", "Brandt", "Costa", "Diallo", "Eklund", "Fox", "Garcia", "Haas", "Ito", "Jensen",
    "Kowal", "Lopez", "Mensah", "Novak", "Okafor", "Park",
];
const TAGS: [&str; 8] = ["rust", "graph", "ops", "data", "web", "ml", "sec", "design"];
const SECTORS: [&str; 6] = ["Labs", "Systems", "Works", "Logistics", "Health", "Energy"];

/// SplitMix64: a tiny, well-mixed, deterministic generator (no dependency, stable output).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One generated person row.
#[derive(Debug, PartialEq)]
pub(crate) struct Row {
    pub(crate) person_id: u64,
    name: String,
    email: String,
    age: u64,
    born: String,
    score: f64,
    active: bool,
    tags: String,
    pub(crate) company_id: u64,
    company: String,
    since: u64,
    pub(crate) knows_id: u64,
    knows_since: String,
}

/// Companies for `people` people.
pub(crate) fn companies(people: u64) -> u64 {
    (people / 50).max(1)
}

/// Row `i` of a dataset of `people` rows with `seed`.
pub(crate) fn row(seed: u64, people: u64, i: u64) -> Row {
    let r = mix(seed ^ mix(i));
    let r2 = mix(r);
    let first = FIRST[(r % 16) as usize];
    let last = LAST[((r >> 8) % 16) as usize];
    let age = 18 + (r >> 16) % 60;
    let year = 2025 - age;
    let month = 1 + (r >> 24) % 12;
    let day = 1 + (r >> 32) % 28;
    let company_id = (r2 % companies(people)) + 1;
    let mut knows_id = (r2 >> 20) % people + 1;
    if knows_id == i + 1 && people > 1 {
        knows_id = knows_id % people + 1;
    }
    let t1 = TAGS[((r2 >> 40) % 8) as usize];
    let t2 = TAGS[((r2 >> 44) % 8) as usize];
    Row {
        person_id: i + 1,
        name: format!("{first} {last}"),
        email: format!(
            "{}.{}{}@example.com",
            first.to_lowercase(),
            last.to_lowercase(),
            i + 1
        ),
        age,
        born: format!("{year:04}-{month:02}-{day:02}"),
        score: ((r2 >> 8) % 10_000) as f64 / 100.0,
        active: !(r >> 40).is_multiple_of(5),
        tags: if t1 == t2 {
            t1.to_owned()
        } else {
            format!("{t1};{t2}")
        },
        company_id,
        company: format!(
            "{} {}",
            LAST[(mix(company_id) % 16) as usize],
            SECTORS[(mix(company_id) >> 8) as usize % SECTORS.len()]
        ),
        since: 2000 + (r2 >> 50) % 25,
        knows_id,
        knows_since: format!("{:04}-{:02}-01", 2010 + (r >> 48) % 15, 1 + (r >> 56) % 12),
    }
}

const HEADER: &str =
    "person_id,name,email,age,born,score,active,tags,company_id,company,since,knows_id,knows_since";

fn write_row(out: &mut impl Write, format: InputFormat, r: &Row, pad: &str) -> io::Result<()> {
    match format {
        InputFormat::Csv if !pad.is_empty() => writeln!(
            out,
            "{},{},{},{},{},{:.2},{},{},{},{},{},{},{},{pad}",
            r.person_id,
            r.name,
            r.email,
            r.age,
            r.born,
            r.score,
            r.active,
            r.tags,
            r.company_id,
            r.company,
            r.since,
            r.knows_id,
            r.knows_since
        ),
        InputFormat::Csv => writeln!(
            out,
            "{},{},{},{},{},{:.2},{},{},{},{},{},{},{}",
            r.person_id,
            r.name,
            r.email,
            r.age,
            r.born,
            r.score,
            r.active,
            r.tags,
            r.company_id,
            r.company,
            r.since,
            r.knows_id,
            r.knows_since
        ),
        InputFormat::JsonLines => {
            let tags: Vec<&str> = r.tags.split(';').collect();
            let mut v = serde_json::json!({
                "person_id": r.person_id, "name": r.name, "email": r.email, "age": r.age,
                "born": r.born, "score": r.score, "active": r.active, "tags": tags,
                "company_id": r.company_id, "company": r.company, "since": r.since,
                "knows_id": r.knows_id, "knows_since": r.knows_since,
            });
            if !pad.is_empty() {
                v["note"] = serde_json::Value::String(pad.to_owned());
            }
            serde_json::to_writer(&mut *out, &v)?;
            out.write_all(b"\n")
        }
    }
}

/// Writes the dataset to `out`, one row at a time (constant memory).
pub(crate) fn write_dataset(
    out: &mut impl Write,
    format: InputFormat,
    seed: u64,
    people: u64,
    pad: usize,
) -> io::Result<()> {
    let filler: String = "weir".chars().cycle().take(pad).collect();
    if format == InputFormat::Csv {
        if pad > 0 {
            writeln!(out, "{HEADER},note")?;
        } else {
            writeln!(out, "{HEADER}")?;
        }
    }
    for i in 0..people {
        write_row(out, format, &row(seed, people, i), &filler)?;
    }
    out.flush()
}

/// Runs `weir generate`.
pub(crate) fn run(args: GenerateArgs) -> anyhow::Result<u8> {
    let result = if args.out.as_os_str() == "-" {
        let stdout = io::stdout();
        let mut w = BufWriter::with_capacity(64 << 10, stdout.lock());
        write_dataset(&mut w, args.format, args.seed, args.people, args.pad)
    } else {
        let f = std::fs::File::create(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        let mut w = BufWriter::with_capacity(64 << 10, f);
        write_dataset(&mut w, args.format, args.seed, args.people, args.pad)
    };
    match result {
        Ok(()) => Ok(0),
        // A closed pipe (`weir generate | head`) is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e).context("writing the dataset"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_well_formed() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_dataset(&mut a, InputFormat::Csv, 7, 500, 0).unwrap();
        write_dataset(&mut b, InputFormat::Csv, 7, 500, 0).unwrap();
        assert_eq!(a, b);
        let mut c = Vec::new();
        write_dataset(&mut c, InputFormat::Csv, 8, 500, 0).unwrap();
        assert_ne!(a, c);
        let text = String::from_utf8(a).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 501);
        for l in &lines {
            assert_eq!(l.split(',').count(), 13, "{l}");
        }
        for i in 0..500 {
            let r = row(7, 500, i);
            assert!((1..=500).contains(&r.knows_id) && r.knows_id != r.person_id);
            assert!((1..=companies(500)).contains(&r.company_id));
        }
        let mut j = Vec::new();
        write_dataset(&mut j, InputFormat::JsonLines, 7, 3, 0).unwrap();
        let mut p = Vec::new();
        write_dataset(&mut p, InputFormat::Csv, 7, 2, 10).unwrap();
        let text = String::from_utf8(p).unwrap();
        assert!(text.lines().all(|l| l.split(',').count() == 14), "{text}");
        assert!(text.lines().nth(1).unwrap().ends_with(",weirweirwe"));
        for l in String::from_utf8(j).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["tags"].is_array());
        }
    }
}
