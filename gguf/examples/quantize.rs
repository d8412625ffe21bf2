//! `cargo run --release -p appliance-gguf --example quantize -- HF_DIR OUT.gguf q4_k_m|q6_k|q8_0`:
//! the builder's conversion on its own, for comparing with `llama-quantize` by hand.

use appliance_gguf::convert::{FileType, Options, Plan};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, out, ty] = args.as_slice() else {
        return Err("usage: quantize HF_DIR OUT.gguf q4_k_m|q6_k|q8_0".into());
    };
    let file_type = FileType::parse(ty).ok_or("unknown type")?;
    let plan = Plan::new(
        dir.as_ref(),
        &Options {
            file_type,
            name: "model".into(),
        },
    )?;
    let file = std::io::BufWriter::new(std::fs::File::create(out)?);
    let (_, report) = plan.write(file)?;
    println!("{report:?}");
    Ok(())
}
