//! Generates the gRPC server and client code from `../proto` with protox (a pure-Rust
//! protobuf compiler), so building needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto = manifest.join("../proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let files = [
        "org/signal/account_stream.proto",
        "sluice/v1/messages.proto",
        "sluice/v1/views.proto",
    ];
    let descriptors = protox::compile(files, [&proto])?;
    // Clients are generated too: the integration tests (and any Rust caller) use them.
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
