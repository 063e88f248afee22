//! `ember-train finetune classify`: the book's chapter 6 (a spam classifier) and appendix E (LoRA).

use super::{CliError, Console, Outcome};
use argh::FromArgs;
use std::path::PathBuf;

#[derive(FromArgs, Debug, Default, Clone)]
#[argh(subcommand, name = "classify")]
/// fine-tune a classifier on `label<TAB>text` rows or a CSV with a header
pub struct ClassifyArgs {
    /// the checkpoint (directory or step directory) to start from
    #[argh(option)]
    pub init: Option<PathBuf>,
    /// the labelled data file
    #[argh(option)]
    pub data: Option<PathBuf>,
    /// output directory (checkpoints and the exported model)
    #[argh(option)]
    pub out: Option<PathBuf>,
    /// print one JSON object on stdout at the end
    #[argh(switch)]
    pub json: bool,
}

/// Runs `ember-train finetune classify`.
pub fn run(_a: ClassifyArgs, _con: &mut Console<'_>) -> Result<Outcome, CliError> {
    Err(CliError::Failed(
        "finetune classify is not available in this build yet".into(),
    ))
}
