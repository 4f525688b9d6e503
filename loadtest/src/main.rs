//! portcullis-load: the mTLS load generator.

fn main() {
    println!("portcullis-load");
}
