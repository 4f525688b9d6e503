//! The `portcullis` binary.

fn main() {
    println!("portcullis");
}
