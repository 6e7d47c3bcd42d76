//! The reference says what the binaries do: the flag tables of `docs/configuration.md` list
//! exactly the flags each binary's `--help` lists, with the same literal defaults.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use carpool_integration_tests::bin;

/// The configuration reference, split into the coordinator's table and the worker's.
fn tables() -> (String, String) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let text = std::fs::read_to_string(path).expect("docs/configuration.md");
    let worker_at = text.find("\n## Worker flags").expect("a worker section");
    (text[..worker_at].to_owned(), text[worker_at..].to_owned())
}

/// Each flag a table documents, with its default cell.
fn documented(table: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in table.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = line.split('|').collect();
        let (names, default) = (cells[1], cells[2].trim().replace('`', ""));
        // `--flag`, `--flag VALUE` or `--a`, `--b`: the flag is the first word of each.
        for name in names.split('`').filter(|n| n.starts_with("--")) {
            let flag = name.split_whitespace().next().unwrap_or(name);
            out.insert(flag.to_owned(), default.clone());
        }
    }
    out
}

/// Each long flag of `binary --help` (but `--help` and `--version`), with its default when
/// clap prints a single-word one.
fn helped(binary: &str) -> BTreeMap<String, Option<String>> {
    let out = Command::new(bin(binary)).arg("--help").output().expect("--help");
    let help = String::from_utf8(out.stdout).expect("utf-8");
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        let flag = trimmed.strip_prefix("--").or_else(|| {
            trimmed
                .get(4..)
                .filter(|_| trimmed.starts_with('-'))
                .and_then(|r| r.strip_prefix("--"))
        });
        if let Some(rest) = flag {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            current = Some(format!("--{name}"));
            flags.insert(format!("--{name}"), None);
        }
        if let (Some(name), Some(at)) = (&current, line.find("[default: ")) {
            let value = &line[at + "[default: ".len()..];
            let value = value.split(']').next().unwrap_or_default();
            if !value.contains(' ') {
                flags.insert(name.clone(), Some(value.to_owned()));
            }
        }
    }
    flags.remove("--help");
    flags.remove("--version");
    flags
}

fn check(binary: &str, table: &str) {
    let doc = documented(table);
    let help = helped(binary);
    let doc_names: BTreeSet<&String> = doc.keys().collect();
    let help_names: BTreeSet<&String> = help.keys().collect();
    assert_eq!(
        help_names.difference(&doc_names).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "{binary}: flags in --help missing from docs/configuration.md"
    );
    assert_eq!(
        doc_names.difference(&help_names).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "{binary}: flags in docs/configuration.md that --help does not have"
    );
    for (name, default) in &help {
        if let Some(default) = default {
            assert!(
                doc[name].contains(default.as_str()),
                "{binary} {name}: --help says the default is {default:?}, docs/configuration.md says {:?}",
                doc[name]
            );
        }
    }
}

#[test]
fn the_coordinators_flags_and_defaults_are_the_ones_documented() {
    check("carpool-coordinator", &tables().0);
}

#[test]
fn the_workers_flags_and_defaults_are_the_ones_documented() {
    check("carpool-worker", &tables().1);
}
