//! maskd binary (being assembled).
fn main() {}
