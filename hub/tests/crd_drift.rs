//! The CRD shipped in the chart is the one the Rust types generate.

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/tether-hub/crds/remoteclusters.tether.io.yaml"
    );
    let checked_in = std::fs::read_to_string(path).expect("chart CRD present");
    assert!(
        checked_in == tether_hub::cli::crd_yaml(),
        "charts/tether-hub/crds is stale: run `cargo run -p tether-hub -- crd > {path}`"
    );
}
