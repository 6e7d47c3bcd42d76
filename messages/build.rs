//! Compiles the messages of `carpool.proto` (the services are compiled by `carpool-proto`)
//! with the vendored protoc, so a fresh machine needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Payloads are shared between the pool, retries and the wire without copying.
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_with_config(config, &["../proto/carpool.proto"], &["../proto"])?;
    println!("cargo:rerun-if-changed=../proto/carpool.proto");
    Ok(())
}
