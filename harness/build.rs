// The specs are embedded in the library (`include_dir!`); rebuild it when any of them change.
fn main() {
    println!("cargo:rerun-if-changed=specs");
}
