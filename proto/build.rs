//! Compiles `carpool.proto` with the vendored protoc, so a fresh machine needs nothing installed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Payloads are shared between the pool, retries and the wire without copying.
    config.bytes(["."]);
    // `build_transport(false)`: the Workers service has an RPC named `Connect`, which would
    // clash with the generated `connect` constructor; clients are built from a `Channel`.
    tonic_prost_build::configure()
        .build_transport(false)
        // prost's codec, but undecodable bytes are INVALID_ARGUMENT (see src/codec.rs).
        .codec_path("crate::codec::Codec")
        // The messages are `carpool-messages`' (generated there without tonic); only the
        // services are generated here.
        .extern_path(".carpool.v1", "::carpool_messages::pb")
        .file_descriptor_set_path(out.join("carpool_descriptor.bin"))
        .compile_with_config(config, &["carpool.proto"], &["."])?;
    println!("cargo:rerun-if-changed=carpool.proto");
    Ok(())
}
