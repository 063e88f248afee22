//! `ember-train finetune instruct`: the book's chapter 7 (instruction fine-tuning on Alpaca JSON).

use super::{CliError, Console, Outcome};
use argh::FromArgs;
use std::path::PathBuf;

#[derive(FromArgs, Debug, Default, Clone)]
#[argh(subcommand, name = "instruct")]
/// instruction fine-tuning on Alpaca-style JSON (instruction, input, output)
pub struct InstructArgs {
    /// the checkpoint (directory or step directory) to start from
    #[argh(option)]
    pub init: Option<PathBuf>,
    /// the Alpaca JSON file
    #[argh(option)]
    pub data: Option<PathBuf>,
    /// output directory (checkpoints, the exported model, responses.json)
    #[argh(option)]
    pub out: Option<PathBuf>,
    /// print one JSON object on stdout at the end
    #[argh(switch)]
    pub json: bool,
}

/// Runs `ember-train finetune instruct`.
pub fn run(_a: InstructArgs, _con: &mut Console<'_>) -> Result<Outcome, CliError> {
    Err(CliError::Failed(
        "finetune instruct is not available in this build yet".into(),
    ))
}
