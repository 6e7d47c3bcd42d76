//! The walls of the house, held by Cargo's manifests: the user's `carpool` command depends on
//! the client alone (the lab, with the coordinator, the worker and a PostgreSQL client, is a
//! crate apart), and the pure core (and the wire messages it uses) has no async runtime, RPC
//! or storage dependency, directly or not; and no two modules of a crate import each other.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

/// The names of the crates a manifest depends on (its `[dependencies]` table; not the dev
/// or build ones).
fn dependencies(manifest: &str) -> Vec<String> {
    let path = format!("{}/../{manifest}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("the manifest");
    let mut deps = Vec::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside && let Some((name, _)) = line.split_once(['=', '.']) {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') {
                deps.push(name.to_owned());
            }
        }
    }
    deps
}

#[test]
fn the_users_command_depends_on_the_client_and_not_on_the_lab() {
    let deps = dependencies("client/cli/Cargo.toml");
    assert!(deps.contains(&"carpool-client".to_owned()), "{deps:?}");
    for banned in [
        "carpool-coordinator",
        "carpool-worker",
        "carpool-lab",
        "tokio-postgres",
        "redb",
    ] {
        assert!(
            !deps.contains(&banned.to_owned()),
            "carpool-cli depends on {banned}: {deps:?}"
        );
    }
}

/// Every crate `package` depends on, directly or not, as Cargo resolves it (normal
/// dependencies: not the dev or build ones).
fn resolved_dependencies(package: &str) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut deps: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    deps.sort();
    deps.dedup();
    deps
}

#[test]
fn the_core_has_no_runtime_rpc_or_storage_dependency() {
    let direct = dependencies("core/Cargo.toml");
    assert!(direct.contains(&"carpool-messages".to_owned()), "{direct:?}");
    // Not only its own manifest: nothing it pulls in brings them either.
    for package in ["carpool-core", "carpool-messages"] {
        let deps = resolved_dependencies(package);
        assert!(deps.contains(&package.to_owned()), "{deps:?}");
        for banned in [
            "tokio",
            "tonic",
            "hyper",
            "redb",
            "tokio-postgres",
            "carpool-proto",
            "carpool-coordinator",
        ] {
            assert!(
                !deps.contains(&banned.to_owned()),
                "{package} depends on {banned}, directly or not: {deps:?}"
            );
        }
    }
}

/// The top-level modules of the crate at `src` (a file `x.rs` or a directory `x/`, not the
/// crate root), each with the text of its files.
fn modules(src: &std::path::Path) -> Vec<(String, String)> {
    fn text_of(path: &std::path::Path, out: &mut String) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).expect("a source directory").flatten() {
                text_of(&entry.path(), out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(path).expect("a source file"));
        }
    }
    let mut mods: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(src).expect("the crate's src").flatten() {
        let path = entry.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if matches!(stem, "lib" | "main") {
            continue;
        }
        let mut text = String::new();
        text_of(&path, &mut text);
        match mods.iter_mut().find(|(m, _)| m == stem) {
            Some((_, t)) => t.push_str(&text),
            None => mods.push((stem.to_owned(), text)),
        }
    }
    mods
}

/// The first path segments `text` names after `crate::` (also inside `crate::{…}`).
fn crate_paths(text: &str) -> std::collections::BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = std::collections::BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            names.extend(group.split(',').map(|item| ident(item.trim())));
        } else {
            names.insert(ident(rest));
        }
    }
    names
}

#[test]
fn crate_paths_are_read_alone_and_in_groups() {
    let names = crate_paths("use crate::driver::Driver;\nuse crate::{metrics::Metrics, web};");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["driver", "metrics", "web"]
    );
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in [
        "core",
        "messages",
        "proto",
        "coordinator",
        "worker",
        "client",
        "client/cli",
        "lab",
    ] {
        let mods = modules(&root.join(krate).join("src"));
        if matches!(krate, "core" | "coordinator" | "worker") {
            assert!(mods.len() > 3, "{krate}: its modules were not found");
        }
        let uses: Vec<(&str, std::collections::BTreeSet<String>)> =
            mods.iter().map(|(m, t)| (m.as_str(), crate_paths(t))).collect();
        for (a, a_uses) in &uses {
            for (b, b_uses) in &uses {
                assert!(
                    !(a < b && a_uses.contains(*b) && b_uses.contains(*a)),
                    "in {krate}, modules {a} and {b} import each other: one of them belongs below the other"
                );
            }
        }
    }
}
