use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum SvmCommand {}

pub fn run(_args: SvmCommand, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("this subcommand is being built")
}
