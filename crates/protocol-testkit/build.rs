//! Generates the test service from proto/protocol/test/v1/echo.proto with the vendored protoc;
//! the platform's custom options come from the contracts in ../../proto.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    let mut config = tonic_prost_build::Config::new();
    // Only the test package is generated here; the options' Rust types live in commerce-api.
    config.extern_path(".commerce", "::commerce_api::commerce");
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("protocol_test_descriptor.bin"))
        .compile_with_config(
            config,
            &["proto/protocol/test/v1/echo.proto"],
            &["proto", "../../proto"],
        )?;
    Ok(())
}
