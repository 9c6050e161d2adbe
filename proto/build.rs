//! Generates the tonic code; uses the vendored `protoc` so a plain
//! `cargo build` needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; this only affects the
    // protoc lookup of prost-build below.
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("messenger_descriptor.bin"))
        .compile_protos(
            &[
                "proto/messenger/command/v1/command.proto",
                "proto/messenger/query/v1/query.proto",
                "proto/messenger/notifier/v1/notifier.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
