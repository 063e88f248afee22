//! `ember-train`: pretraining, fine-tuning, tokenizer training and export.

fn main() {
    eprintln!("ember-train: no command is available yet in this build");
    std::process::exit(2);
}
