//! The walls of the house, held by Cargo's manifests: the user's `carpool` command depends on
//! the client alone (the lab, with the coordinator, the worker and a PostgreSQL client, is a
//! crate apart), and the pure core has no async runtime, RPC or storage dependency.

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

#[test]
fn the_core_has_no_runtime_rpc_or_storage_dependency() {
    let deps = dependencies("core/Cargo.toml");
    for banned in ["tokio", "tonic", "redb", "tokio-postgres", "carpool-proto"] {
        assert!(
            !deps.contains(&banned.to_owned()),
            "carpool-core depends on {banned}: {deps:?}"
        );
    }
}
