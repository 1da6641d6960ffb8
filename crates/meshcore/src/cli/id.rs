//! `meshcore id`: print the node id.

use meshcore_node::identity_file::{self, KEY_FILE};

use super::DataDirArg;

/// Arguments of `meshcore id`.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
}

pub(super) fn run(args: IdArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.resolve()?;
    meshcore_node::data_dir::prepare(&dir)?;
    let (keys, created) = identity_file::load_or_create(&dir.join(KEY_FILE))?;
    if created {
        eprintln!("created a new identity in {}", dir.join(KEY_FILE).display());
    }
    println!("{}", keys.node_id());
    Ok(())
}
