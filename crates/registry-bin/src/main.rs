//! The `speculum-registry` binary (being written).
fn main() {}
