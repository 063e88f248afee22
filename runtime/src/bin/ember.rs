//! `ember`: generate, chat, score, classify, inspect and benchmark `.ember` models.

fn main() {
    eprintln!("ember: no command is available yet in this build");
    std::process::exit(2);
}
