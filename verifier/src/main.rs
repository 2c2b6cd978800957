//! The `berth-verifier` binary.

fn main() {
    eprintln!("berth-verifier: not yet wired");
    std::process::exit(2);
}
