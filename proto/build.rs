//! Compiles `grayscope/v1/*.proto` with protox, a pure-Rust protobuf compiler, so that building needs no `protoc`.
//! With the `grpc` feature the tonic services are generated too; without it, only the prost messages (wasm32).

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let protos = ["grayscope/v1/collector.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    if env::var_os("CARGO_FEATURE_GRPC").is_some() {
        // Prost's codec, but a request of more entries than `codec::MAX_ENTRIES` is refused before it is decoded.
        tonic_prost_build::configure()
            .out_dir(&out)
            .codec_path("crate::codec::BoundedCodec")
            .compile_fds(fds)?;
    } else {
        prost_build::Config::new().out_dir(&out).compile_fds(fds)?;
    }
    Ok(())
}
