//! Generates the gRPC client and message types from the service's
//! `../proto`, with a pure-Rust protobuf compiler, so building needs no
//! system `protoc`. The server half is not generated: a client has no use
//! for it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/readstates/v1/readstates.proto";
    println!("cargo:rerun-if-changed={proto}");

    let descriptors = protox::compile([proto], ["../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
