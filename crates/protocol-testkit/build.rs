//! Generates the test service from proto/protocol/test/v1/echo.proto with the vendored protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("protocol_test_descriptor.bin"))
        .compile_with_config(config, &["proto/protocol/test/v1/echo.proto"], &["proto"])?;
    Ok(())
}
