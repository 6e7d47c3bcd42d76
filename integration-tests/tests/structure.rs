//! The walls of the house, held by Cargo's manifests: the user's `carpool` command depends on
//! the client alone (the lab, with the coordinator, the worker and a PostgreSQL client, is a
//! crate apart), and the pure core (and the wire messages it uses) has no async runtime, RPC
//! or storage dependency, directly or not.

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
