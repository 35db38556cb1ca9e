//! The `speculum` helper (being written).
fn main() {}
