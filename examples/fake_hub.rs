//! A fake Hugging Face Hub and the builder's hashing path as a command, for `scripts/bench-fetch`.
//!
//! An example, not a binary of the package: it never ships. `fake_hub serve DIR REPO` serves
//! every file of DIR as the `main` branch of REPO on 127.0.0.1 (streamed from disk) and prints
//! its URL; `fake_hub hash FILE` hashes FILE exactly as a download is hashed and prints the
//! digest and MB/s.

#[path = "../tests/support/fake_hub.rs"]
mod fake_hub;

use std::path::Path;
use std::time::Instant;

use appliance::fetch::hub::verify;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", dir, repo] => {
            let hub = fake_hub::FakeHub::start();
            let commit = hub.commit_dir_on_disk(repo, "main", Path::new(dir));
            println!("{} {commit}", hub.url);
            // Serve until killed.
            loop {
                std::thread::park();
            }
        }
        ["hash", file] => {
            let start = Instant::now();
            let measured = verify::hash_file(Path::new(file), false).expect("read file");
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{} {:.1}",
                measured.sha256.hex(),
                measured.size as f64 / secs / 1e6
            );
        }
        _ => {
            eprintln!("usage: fake_hub serve DIR REPO | fake_hub hash FILE");
            std::process::exit(2);
        }
    }
}
