//! Generates Rust from `proto/commerce/**.proto`: prost messages (with prost-reflect derives, so the
//! runtime can transcode JSON and validate), tonic servers/clients, and the encoded descriptor set.
//!
//! `buf/validate/validate.proto` is third-party and never committed. Its descriptor comes from the
//! `prost-protovalidate-types` crate — the same version that validates at runtime — and is handed to
//! protoc with `--descriptor_set_in`, so no copy of the file is needed to build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

use prost::Message as _;
use prost_types::FileDescriptorSet;

type BuildResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> BuildResult<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!(
        "cargo:rerun-if-changed={}",
        proto_root.join("commerce").display()
    );

    let mut protos = Vec::new();
    collect_protos(&proto_root.join("commerce"), &mut protos)?;
    protos.sort();
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    let validate_set = out_dir.join("buf_validate.binpb");
    fs::write(&validate_set, validate_descriptor_set().encode_to_vec())?;

    let descriptor_path = out_dir.join("commerce_descriptor.binpb");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let status = Command::new(&protoc)
        .arg(format!("--descriptor_set_in={}", validate_set.display()))
        .arg(format!("--proto_path={}", proto_root.display()))
        .arg(format!(
            "--proto_path={}",
            protoc_bin_vendored::include_path()?.display()
        ))
        .arg("--include_imports")
        .arg("--include_source_info")
        .arg(format!(
            "--descriptor_set_out={}",
            descriptor_path.display()
        ))
        .args(
            protos
                .iter()
                .map(|p| p.strip_prefix(&proto_root).unwrap_or(p)),
        )
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed on proto/ ({status})").into());
    }

    let descriptor_bytes = fs::read(&descriptor_path)?;
    let descriptor_set = FileDescriptorSet::decode(descriptor_bytes.as_slice())?;

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config.extern_path(".buf.validate", "::prost_protovalidate_types");
    // Every commerce message implements prost_reflect::ReflectMessage against the crate's pool.
    let pool = prost_reflect::DescriptorPool::decode(descriptor_bytes.as_slice())?;
    for message in pool.all_messages() {
        let name = message.full_name();
        if !name.starts_with("commerce.") {
            continue;
        }
        config.type_attribute(name, "#[derive(::prost_reflect::ReflectMessage)]");
        config.type_attribute(
            name,
            format!(r#"#[prost_reflect(descriptor_pool = "crate::DESCRIPTOR_POOL", message_name = "{name}")]"#),
        );
    }

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Services not built yet answer UNIMPLEMENTED for every RPC instead of failing to compile.
        .generate_default_stubs(true)
        .compile_fds_with_config(descriptor_set, config)?;
    Ok(())
}

/// `buf/validate/validate.proto` and the well-known types it imports, as a descriptor set.
fn validate_descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet {
        file: prost_protovalidate_types::DESCRIPTOR_POOL
            .file_descriptor_protos()
            .filter(|file| file.name() == "buf/validate/validate.proto")
            .cloned()
            .collect(),
    }
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> BuildResult<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
