// Generates the tonic/prost code from sync.proto with protox, so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=sync.proto");
    let fds = protox::compile(["sync.proto"], ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("sync_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // BTreeMap keeps map encoding deterministic, which the content-hash version relies on.
        .btree_map(".")
        // prost's codec with smaller buffers (src/codec.rs).
        .codec_path("crate::codec::SyncCodec")
        .compile_fds(fds)?;
    Ok(())
}
