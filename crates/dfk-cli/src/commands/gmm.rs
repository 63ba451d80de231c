use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum GmmCommand {}

pub fn run(_args: GmmCommand, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("this subcommand is being built")
}
